"""Which precision of a graph runs here.

    precision, session = open_graph(bundle, "clip_image", "int8", providers)

A precision asked for runs when it holds (verify.py: within its bound in the
manifest and on this machine); one that does not is refused with a
PrecisionError naming the figure and the precisions that hold, unless
`allow_unverified` (then a warning says the same). A graph without the variant
runs fp32, as it always has. "auto" runs the fastest variant that holds, timed
on the check frame at start, and logs why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..precisions import PRECISIONS
from .loader import Bundle
from .manifest import BundleError
from .verify import Probe, Verdict, verdict

log = logging.getLogger("lineside.precision")

AUTO = "auto"


class PrecisionError(BundleError):
    """A precision variant outside its parity bound (in the manifest or on this machine), refused."""


def open_graph(
    bundle: Bundle,
    name: str,
    wanted: str,
    providers: Sequence[str] = ("cpu",),
    allow_unverified: bool = False,
    cache: Path | None = None,
    **session_options,
):
    """(precision, session) of graph `name` for the setting `wanted` (a precision or "auto")."""
    if wanted == AUTO:
        return _fastest(bundle, name, providers, cache, **session_options)
    precision = bundle.precision_for(name, wanted)
    session = bundle.session(name, precision, providers, **session_options)
    if precision == "fp32":
        return precision, session
    probe = Probe(bundle, name, providers, **session_options)
    found = verdict(probe, precision, session, cache)
    if found.holds:
        log.info(
            "%s %s holds its parity bound (cosine %.4f here%s)",
            name,
            precision,
            found.cosine(),
            ", from the cache" if found.cached else "",
        )
        return precision, session
    if allow_unverified:
        log.warning(
            "%s %s is outside its parity bound %s; running it because allow_unverified_precision is on",
            name,
            precision,
            found.why_not(),
        )
        return precision, session
    holding = [p for p in _ordered(bundle, name) if p != precision and _holds(probe, p, cache)]
    raise PrecisionError(refusal(found, holding))


def refusal(found: Verdict, holding: list[str]) -> str:
    """The one-line refusal: the figure that misses, where, and what would work."""
    name, precision = found.component, found.precision
    return (
        f"{name} {precision} is outside its parity bound {found.why_not()}. Precisions of {name} that "
        f"hold here: {', '.join(holding)}; run one of them (--precision {holding[-1]}, or auto for the "
        f"fastest that holds), or give --allow-unverified-precision to run {precision} anyway"
    )


def _ordered(bundle: Bundle, name: str) -> list[str]:
    """The graph's precisions, fp32 first."""
    files = bundle.component(name).files
    return sorted(files, key=lambda p: PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS))


def _holds(probe: Probe, precision: str, cache: Path | None) -> bool:
    if precision == "fp32":
        return True
    session = probe.bundle.session(probe.name, precision, probe.providers, **probe.options)
    return verdict(probe, precision, session, cache).holds


def _fastest(bundle: Bundle, name: str, providers: Sequence[str], cache: Path | None, **session_options):
    """The fastest precision of `name` that holds, each timed on the check frame (fp32 when none
    beats it). At most three sessions are open at once: fp32 (the reference), the best, the next."""
    fp32 = bundle.session(name, "fp32", providers, **session_options)
    probe = Probe(bundle, name, providers, fp32=fp32, **session_options)
    best, times, refused = ("fp32", fp32), {"fp32": probe.time_ms(fp32)}, []
    for precision in _ordered(bundle, name)[1:]:
        session = bundle.session(name, precision, providers, **session_options)
        found = verdict(probe, precision, session, cache)
        if not found.holds:
            refused.append(f"{precision} outside its bound {found.why_not()}")
            continue
        times[precision] = probe.time_ms(session)
        if times[precision] < times[best[0]]:
            best = (precision, session)
    timed = ", ".join(f"{p} {ms:.1f} ms" for p, ms in times.items())
    log.info(
        "%s: auto runs %s, the fastest precision that holds here (check frame: %s)%s",
        name,
        best[0],
        timed,
        "".join(f"; {why}" for why in refused),
    )
    return best
