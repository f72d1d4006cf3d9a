"""The results log as a hash chain, and `lineside audit verify LOG`, which checks one.

An auditor asks two things of a log of verdicts: is every line as it was written,
and is every line still there, in its order. Each line serve writes therefore ends
with three fields, added to its JSON text as it is written:

    seq    1, 2, 3, ... over the life of the log, across restarts
    prev   the `hash` of the line before it (GENESIS for the log's first line; the
           sha256 of the raw line when the one before is not chained, as a line of a
           version before the chain is)
    hash   sha256 of the line's own text up to `, "hash": ...` with "}" put back:
           its content, its seq and its prev, so every hash covers all lines before

A changed line no longer matches its own hash (or, with its hash recomputed, the
next line's prev); a removed line leaves a gap in seq; swapped lines run seq
backwards; a log whose head was cut starts above seq 1. Rewriting a line and every
hash after it consistently is not caught by the chain alone: compare the head
(last seq and hash, which verify prints) with one recorded elsewhere.

This module imports nothing of lineside's, so the verifier runs wherever the log
is copied to.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64  # the prev of a log's first line
_TAIL = re.compile(r', "hash": "([0-9a-f]{64})"\}\Z')
CHUNK = 1 << 16  # bytes read at a time, backwards, looking for the last line


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def link(text: str, seq: int, prev: str) -> tuple[str, str]:
    """(the chained line, its hash) for `text`, one JSON object in strict JSON as records write it."""
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"only a JSON object can be chained, got {text[:40]!r}")
    body = ("{" if text == "{}" else text[:-1] + ", ") + f'"seq": {seq}, "prev": "{prev}"}}'
    digest = sha256(body.encode("utf-8"))
    return body[:-1] + f', "hash": "{digest}"}}', digest


@dataclass(frozen=True)
class Head:
    """Where a chain stands: the next line's seq and prev."""

    seq: int = 1
    prev: str = GENESIS
    chained: bool = True  # False: the last line is not part of a chain (a log of a version before it)


def head_after(raw: bytes | None) -> Head:
    """The chain's head after the line `raw` (without its newline; None: an empty log)."""
    if raw is None:
        return Head()
    fields = _fields(raw)
    if fields is None:
        return Head(1, sha256(raw), chained=False)
    return Head(fields[0] + 1, fields[2])


def last_line(path: Path) -> bytes | None:
    """The last line of the regular file at `path` without its newline, None when empty or no such file.

    The file must end on a newline (records end a partial last line before this is asked)."""
    try:
        with open(path, "rb") as file:
            end = file.seek(0, os.SEEK_END)
            if end == 0:
                return None
            stop = end - 1  # the final newline
            start = stop
            while start > 0:
                begin = max(0, start - CHUNK)
                file.seek(begin)
                found = file.read(start - begin).rfind(b"\n")
                if found >= 0:
                    start = begin + found + 1
                    break
                start = begin
            file.seek(start)
            return file.read(stop - start)
    except FileNotFoundError:
        return None


def _fields(raw: bytes) -> tuple[int, str, str] | None:
    """(seq, prev, hash) of a chained line, None when it carries no chain (or is no JSON object)."""
    try:
        line = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(line, dict):
        return None
    seq, prev, digest = line.get("seq"), line.get("prev"), line.get("hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(prev, str) or not isinstance(digest, str):
        return None
    return seq, prev, digest


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line number in the file
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}"


@dataclass(frozen=True)
class _Link:
    number: int  # line number in the file
    seq: int | None  # None: the line carries no chain
    prev: str
    digest: str  # its own hash field (the raw line's sha256 when it is not chained)


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, raw line without its newline, whether it ended in a newline)."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, 1):
            ended = raw.endswith(b"\n")
            yield number, raw[:-1] if ended else raw, ended


def verify(path: Path) -> tuple[int, Head, list[Problem]]:
    """(lines read, the head after the last, every problem found, by line).

    One pass reads each line's chain and checks its own hash; then the order: seq runs 1, 2, 3
    down the file, and each prev is the hash of the line that holds the seq before it (wherever
    that is, so that two swapped lines are named as reordered, not as changed).
    """
    problems: list[Problem] = []
    links: list[_Link] = []
    head = Head()
    for number, raw, ended in _lines(path):
        if not ended:
            problems.append(Problem(number, "the last line is unterminated (a stop mid-write, or the log was cut)"))
        found, problem = _read(number, raw)
        links.append(found)
        problems += [problem] if problem else []
        head = head_after(raw)
    problems += _order(links)
    return len(links), head, sorted(problems, key=lambda p: p.line)


def _read(number: int, raw: bytes) -> tuple[_Link, Problem | None]:
    """The line's chain fields, and what is wrong with the line on its own."""
    fields = _fields(raw)
    if fields is None:
        why = "carries no seq/prev/hash: not part of the chain (inserted by hand, or written before the chain)"
        return _Link(number, None, "", sha256(raw)), Problem(number, why)
    seq, prev, digest = fields
    found = _Link(number, seq, prev, digest)
    if not _TAIL.search(raw.decode("utf-8")):
        return found, Problem(number, f"seq {seq}: its hash is not its last field: the line was rewritten")
    if sha256(_body(raw)) != digest:
        return found, Problem(number, f"seq {seq}: its content does not match its hash: the line was changed")
    return found, None


def _order(links: list[_Link]) -> list[Problem]:
    """Gaps, reorderings and broken prev links among the chained lines."""
    problems: list[Problem] = []
    by_seq = {x.seq: x for x in links if x.seq is not None}
    last: _Link | None = None  # the chained line nearest above
    for index, x in enumerate(links):
        if x.seq is None:
            continue
        if last is None and x.seq > 1 and (x.seq - 1) not in by_seq:
            what = f"the chain starts at seq {x.seq}: its first {x.seq - 1} line(s) are missing (the head was cut)"
            problems.append(Problem(x.number, what))
        elif last is not None and x.seq <= last.seq:
            what = f"seq {x.seq} comes after seq {last.seq} (line {last.number}): lines reordered or repeated"
            problems.append(Problem(x.number, what))
        elif last is not None and x.seq > last.seq + 1 and not all(s in by_seq for s in range(last.seq + 1, x.seq)):
            what = f"seq {x.seq} follows seq {last.seq} (line {last.number}): {x.seq - last.seq - 1} line(s) removed"
            problems.append(Problem(x.number, what))
        problems += _prev(x, links[index - 1] if index else None, by_seq)
        last = x
    return problems


def _prev(x: _Link, before: _Link | None, by_seq: dict) -> list[Problem]:
    """x's prev against the hash of the line it follows in the chain; a mismatch is blamed on that line."""
    if x.seq == 1:
        want = GENESIS if before is None else before.digest if before.seq is None else None
        if want is not None and x.prev != want:
            return [Problem(x.number, "seq 1 does not start from the line before it: lines before it were removed")]
        return []
    earlier = by_seq.get(x.seq - 1)
    if earlier is None or x.prev == earlier.digest:
        return []  # a gap, said above
    what = f"seq {earlier.seq}: changed, its own hash recomputed (line {x.number}, seq {x.seq}, links to another)"
    return [Problem(earlier.number, what)]


def _body(raw: bytes) -> bytes:
    """The text a line's hash covers: the line without its hash field."""
    text = raw.decode("utf-8")
    return (_TAIL.sub("}", text)).encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lineside audit", description="check a results log's hash chain")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="find changed, removed or reordered lines; exit 1 if any")
    check.add_argument("log", type=Path, help="a results log (serve's results setting)")
    args = parser.parse_args(argv)
    try:
        count, head, problems = verify(args.log)
    except OSError as e:
        print(f"lineside audit: cannot read {args.log}: {e}", file=sys.stderr)
        return 2
    if problems:
        for problem in problems:
            print(f"{args.log}: {problem}")
        print(f"{args.log}: NOT intact: {len(problems)} problem(s) in {count} lines")
        return 1
    print(f"{args.log}: intact: {count} lines, seq 1..{head.seq - 1}, head {head.prev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
