"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class SelfctxError(Exception):
    """A problem with the user's input or environment: the message says what is wrong and what to do."""

    exit_code: int = 2
