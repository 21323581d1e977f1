"""Tolerant parsers for the strict formats the prompts ask a small model for."""

from __future__ import annotations

import re


def clean_passage(text: str) -> str:
    """Strip chat debris around a passage: markdown fences, outer quotes, runs of blank lines."""
    text = text.strip().strip("`").strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def labeled_fields(text: str, labels: tuple[str, ...]) -> dict[str, str] | None:
    """Parse 'Label: value' blocks (case-insensitive, optional **bold**, values may span lines).

    Returns the first value of every label, or None when any label is missing or empty.
    """
    pattern = "|".join(re.escape(label) for label in labels)
    splitter = re.compile(r"(?im)^\s*(?:\d+[.)]\s*)?(?:\*\*)?\s*(" + pattern + r")\s*(?:\*\*)?\s*[:：]\s*")
    pieces = splitter.split(text)
    found: dict[str, str] = {}
    for i in range(1, len(pieces) - 1, 2):
        key = pieces[i].lower()
        value = pieces[i + 1].strip().strip("*").strip()
        if key not in found and value:
            found[key] = value
    wanted = {label.lower() for label in labels}
    if not wanted <= found.keys():
        # Inline form "Question: ... Answer: ..." on one line.
        inline = re.search(
            r"(?is)"
            + re.escape(labels[0])
            + r"\s*[:：]\s*(.+?)\s*"
            + re.escape(labels[-1])
            + r"\s*[:：]\s*(.+)",
            text,
        )
        if len(labels) == 2 and inline:
            return {labels[0].lower(): inline.group(1).strip(), labels[1].lower(): inline.group(2).strip()}
        return None
    return {label.lower(): found[label.lower()] for label in labels}


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def strip_code_fences(text: str) -> str:
    """The body of the first ``` fenced block, or the text itself."""
    match = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", text, re.DOTALL)
    return (match.group(1) if match else text).strip("\n")
