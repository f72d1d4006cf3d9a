"""What every fuzzed surface must answer: a result, or a clear one-line error that names what was wrong."""

from __future__ import annotations

CLEAR = (ValueError, FileNotFoundError)


def clear_error(error: BaseException) -> None:
    """A refusal a person can act on: one non-empty line, no traceback, no bare repr of an internal."""
    text = str(error)
    assert text.strip(), f"{type(error).__name__} with an empty message"
    assert "Traceback" not in text and "\n" not in text.strip(), f"not one line: {text!r}"
