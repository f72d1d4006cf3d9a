"""What the PLC outputs (opcua.py, opcua_write.py, modbus.py) share: verdict codes, spec options, pacing.

A PLC wants one small fact per part, fast: OK, NG or ERROR, and the number
behind it. These outputs act on verdict lines only (TEACH, EXPLANATION and
others pass by). Their libraries (asyncua, pymodbus) come with the `plant`
extra and are imported when such an output is asked for, never before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import re
import threading
import time
from urllib.parse import parse_qsl

log = logging.getLogger("lineside.serve")

VERDICTS = {"OK": 0, "NG": 1, "ERROR": 2}  # the verdict code a PLC compares with (Modbus register, integer node)


def verdict(record: dict) -> str | None:
    """The record's label when it is a verdict (OK, NG, ERROR); None for every other line."""
    label = record.get("label")
    return label if label in VERDICTS else None


def camera_of(record: dict) -> str:
    return str(record.get("camera") or "0")  # lines of an unnamed camera carry none


def score_of(record: dict) -> float | None:
    """The image score, or None when the line has none (an ERROR may carry null)."""
    score = record.get("image_score")
    return float(score) if isinstance(score, (int, float)) else None


def require(module: str, spec: str):
    """Import `module` for the output `spec`, or say which extra brings it.

    The library's INFO lines (asyncua writes one per request) stay out of serve's
    log unless its logger was configured already.
    """
    package = module.split(".")[0]
    try:
        imported = importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(
            f"--sink {spec!r} needs {package}: pip install 'lineside[plant]' (or -c constraints.txt asyncua pymodbus)"
        ) from e
    library = logging.getLogger(package)
    if library.level == logging.NOTSET:
        library.setLevel(logging.WARNING)
    return imported


def options(spec: str, query: str, known: dict[str, str]) -> dict[str, str]:
    """The spec's ?key=value options; an unknown or repeated key is refused with the known ones listed."""
    pairs = parse_qsl(query, keep_blank_values=True)
    keys = [k for k, _ in pairs]
    for key in keys:
        if key not in known:
            listed = ", ".join(f"{k} ({why})" for k, why in known.items())
            raise ValueError(f"--sink {spec!r}: unknown option {key!r}; known: {listed}")
        if keys.count(key) > 1:
            raise ValueError(f"--sink {spec!r}: option {key!r} given twice")
    return dict(pairs)


def integer(spec: str, name: str, text: str, low: int, high: int) -> int:
    """Plain ASCII digits only: int() would also take ' 1_0 ', '+5' or other scripts' digits."""
    value = int(text) if re.fullmatch(r"-?[0-9]{1,9}", text) else None
    if value is None or not low <= value <= high:
        raise ValueError(f"--sink {spec!r}: {name}={text!r} must be a whole number in {low}..{high}")
    return value


def port_of(spec: str, url, default: int) -> int:
    """The URL's port (`default` when none is given); one that is not a port (0 included: a PLC dials a
    known one) is refused naming the spec."""
    try:
        port = url.port
    except ValueError as e:
        raise ValueError(f"--sink {spec!r}: the port must be a number in 1..65535") from e
    if port == 0:
        raise ValueError(f"--sink {spec!r}: the port must be a number in 1..65535")
    return port or default


def plain_url(spec: str, url, usage: str, userinfo: bool = False) -> None:
    """Refuse what the output would silently ignore: a fragment, or user and password where none is read."""
    if url.fragment or "#" in spec or (not userinfo and (url.username or url.password)):
        raise ValueError(f"--sink {spec!r}: use {usage} (no #fragment" + (")" if userinfo else ", no USER:PASS@)"))


class Redial:
    """Paces reconnections to a PLC that is away: at once the first time, then at most every `every_s`.

    Between attempts a record is refused at once (a counted failure) rather than
    waiting on a connect timeout, so a dead PLC never backs up the queue.
    """

    def __init__(self, every_s: float = 1.0):
        self.every_s, self.last = every_s, None

    def due(self) -> bool:
        return self.last is None or time.monotonic() - self.last >= self.every_s

    def failed(self) -> None:
        self.last = time.monotonic()

    def succeeded(self) -> None:
        self.last = None


class LoopThread(threading.Thread):
    """An asyncio loop of its own for asyncua, which is async only; `run_sync` waits for a coroutine from outside."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._unhandled)

    def _unhandled(self, loop, context: dict) -> None:
        """What asyncio would log with a traceback (an accept that failed: too many open files), in one line:
        the loop goes on either way, and the log is read by people at the line."""
        error = context.get("exception")
        why = f": {type(error).__name__}: {error}" if error is not None else ""
        log.warning("%s: %s%s", self.name, context.get("message", "unhandled error in the event loop"), why)

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def run_sync(self, coroutine, timeout: float):
        """The coroutine's result, run on this loop; TimeoutError when it takes longer than `timeout` seconds."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def stop(self) -> None:
        if self.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.join(5)
