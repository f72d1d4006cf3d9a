"""Open-file descriptors: what peers may take, and what is always kept back for the line itself.

Every frame read from a file, the results log, each sink and each peer's
connection takes a descriptor. A peer that may open connections (OPC UA
clients, HTTP clients) must not be able to take the last ones: the issue saw
1,100 idle OPC UA connections push serve to 1,017 of 1,024 descriptors, after
which a good frame was logged ERROR ("Too many open files"). So listeners cap
their connections, the soft RLIMIT_NOFILE is raised to the hard one at start
(a shell's 1,024 is a default, not a decision), and a listener whose cap would
eat into RESERVE refuses serve at start instead.
"""

from __future__ import annotations

import logging
import os

try:
    import resource
except ImportError:  # not on Windows, where serve does not run on a line; nothing to raise or count there
    resource = None

log = logging.getLogger("lineside.serve")

RESERVE = 128  # kept for the results log, frames being read, sinks, the bundle's files and the libraries
HIGHEST = 1 << 20  # Linux's default nr_open: a soft limit above it is refused, "unlimited" hard included


def raise_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit in force (None where there is none)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = HIGHEST if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:  # a container's nr_open below the hard limit
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
    return soft


def in_use() -> int | None:
    """Descriptors this process holds now (None where /proc is not there to count them)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def make_room(count: int, what: str, fix: str) -> None:
    """Refuse (OSError naming `what` and `fix`) when `count` more descriptors would leave less than RESERVE."""
    limit = raise_limit()
    held = in_use()
    if limit is None or held is None or limit == resource.RLIM_INFINITY:
        return
    if held + count + RESERVE > limit:
        raise OSError(
            f"{what}: {count} connections need {count} file descriptors beside the {RESERVE} kept for results "
            f"and frames, and this process holds {held} of at most {limit} (RLIMIT_NOFILE): {fix}"
        )
