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


def first_question(text: str) -> str:
    """The first sentence that ends in '?', wherever it is in the reply (small models often open with a
    greeting or a restated instruction), without a "Question:" label or quotes; "" when there is none."""
    for line in text.strip().splitlines():
        line = line.strip().strip("*").strip().removeprefix("Question:").strip().strip('"')
        match = re.search(r"[^.!?]*\?", line)
        if match and match.group(0).strip():
            return match.group(0).strip().strip('"')
    return ""


def short_detail(text: str) -> str:
    """The detail a reply names: a quoted span, else what follows the last colon of its first line (for
    "The key detail is: X" / "Name: X"), else the first line; stripped of quotes and markdown."""
    line = first_line(text)
    quoted = re.search(r'"([^"]+)"', line)
    if quoted:
        line = quoted.group(1)
    elif ":" in line and line.rsplit(":", 1)[1].strip():
        line = line.rsplit(":", 1)[1]
    return line.strip(" .\"'*")


# A capitalized word run not at a sentence start (after a lower-case word or a comma), or a number.
_NAME_IN_SENTENCE = re.compile(r"(?<=[a-z,;] )[A-Z][A-Za-z'-]+(?: [A-Z][A-Za-z'-]+)*")
_NUMBER = re.compile(r"(?<![\w-])\d[\d,]*(?:\.\d+)?\b")
_LIST_MARKER = re.compile(r"[ \t]*[.)]")


def salient_details(text: str) -> list[str]:
    """Names and numbers a passage states, in order of first appearance (no repeats).

    Numbers of one digit, list markers ("2." at a line start) and parts of a name ("COVID-19") are no
    details: they link any two passages.
    """
    numbers = []
    for match in _NUMBER.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        marker = not text[line_start : match.start()].strip() and _LIST_MARKER.match(text, match.end())
        if len(re.sub(r"\D", "", match.group(0))) >= 2 and not marker:
            numbers.append(match.group(0))
    return list(dict.fromkeys(_NAME_IN_SENTENCE.findall(text) + numbers))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentence(text: str) -> str:
    """The first sentence of a reply, past a preamble line ("Here is the sentence:"), without a label or
    quotes; "" for an empty reply."""
    for line in text.strip().splitlines():
        line = line.strip().strip("*").strip()
        if not line or line.endswith(":"):
            continue
        line = re.sub(r"^(?:Sentence|Answer)\s*[:：]\s*", "", line, flags=re.IGNORECASE).strip().strip('"')
        return _SENTENCE_END.split(line, maxsplit=1)[0].strip().strip('"')
    return ""


def insert_sentence(text: str, sentence: str, choice: int) -> str:
    """`text` with `sentence` inserted after one of its sentences (`choice` picks which; the text's own
    spacing and paragraphs are kept)."""
    text = text.strip()
    ends = [m.start() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    at = ends[choice % len(ends)]
    return f"{text[:at]} {sentence}{text[at:]}"
