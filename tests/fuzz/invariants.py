"""What every fuzzed surface must answer: a result, or a clear one-line error that names what was wrong."""

from __future__ import annotations

import logging
import threading

CLEAR = (ValueError, FileNotFoundError)


def clear_error(error: BaseException) -> None:
    """A refusal a person can act on: one non-empty line, no traceback, no bare repr of an internal."""
    text = str(error)
    assert text.strip(), f"{type(error).__name__} with an empty message"
    assert "Traceback" not in text and "\n" not in text.strip(), f"not one line: {text!r}"


class Captured(logging.Handler):
    """Every log record while the module's serve runs, to find a traceback or an exception's record."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.INFO and (record.exc_info or "Traceback" in text):
            with self.lock_:
                self.bad.append(f"{record.name}: {text[:200]} ({record.exc_info and record.exc_info[0]})")
