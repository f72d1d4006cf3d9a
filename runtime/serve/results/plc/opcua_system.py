"""The system nodes of serve's OPC UA server: one state in OPC 40100's words, and inspection diagnostics.

Under Objects/Lineside/System, node ids `ns=<index>;s=System.<Name>` (no `Lineside.` prefix, so that
no camera's ids can meet them); docs/plc.md has the table:

    State            String   Preoperational, Initialized, Ready, Executing, Error, Halted
    StateReason      String   why Error (or Initialized: what is awaited); "" otherwise
    OkCount, NgCount, ErrorCount, TriggersRefused   UInt32, since the last reset
    InspectionTimeMinMs, InspectionTimeAvgMs, InspectionTimeMaxMs   Double, since the last reset (-1: none)
    InspectionsTimed UInt32   the verdicts those three are over (an ERROR without a timing is not)
    ResetTime        DateTime when the counts were last zeroed (start, or ResetDiagnostics)
    ResetDiagnostics Method   zeros the counts and times

The state is a reading of what serve knows already, never bookkeeping of its own: each camera's
condition as serve's watchdog tells its sinks (cameras.py `condition`: its `ready()`, `stalled()`
and `failure()`), and each camera's PLC handshake (handshake.py `view`).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field

STATES = ("Preoperational", "Initialized", "Ready", "Executing", "Error", "Halted")  # OPC 40100's names
COUNTS = ("OkCount", "NgCount", "ErrorCount", "TriggersRefused", "InspectionsTimed")
TIMES = ("InspectionTimeMinMs", "InspectionTimeAvgMs", "InspectionTimeMaxMs")
NODES = {  # name -> (OPC UA type, value before start); the reason goes before the state it explains
    "StateReason": ("String", "starting"),
    "State": ("String", "Preoperational"),
    **{name: ("UInt32", 0) for name in COUNTS},
    **{name: ("Double", -1.0) for name in TIMES},
    "ResetTime": ("DateTime", datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc)),  # OPC UA's zero
}


def system_state(started: bool, halted: bool, conditions: dict, views: dict) -> dict:
    """{StateReason, State} from each camera's condition (camera -> (online | degraded | offline | "", why))
    and each camera's handshake view (camera -> handshake.View)."""
    state, reason = _state(started, halted, conditions, views)
    return {"StateReason": reason, "State": state}


def _state(started: bool, halted: bool, conditions: dict, views: dict) -> tuple[str, str]:
    if halted:
        return "Halted", "serve is stopping"
    if not started:
        return "Preoperational", "starting"
    errors = [
        f"camera {c}: {why or state}" for c, (state, why) in sorted(conditions.items()) if state not in ("", "online")
    ]
    errors += [f"camera {c}: PLC result queue full: {v.why}" for c, v in sorted(views.items()) if v.state == "Full"]
    if errors:
        return "Error", "; ".join(errors)
    if any(v.busy for v in views.values()):
        return "Executing", ""
    waiting = sorted(c for c, (state, _) in conditions.items() if state != "online")
    if not conditions or waiting:
        return "Initialized", "waiting for " + (", ".join(f"camera {c}" for c in waiting) or "the first camera")
    return "Ready", ""


@dataclass
class Diagnostics:
    """Counts and inspection times since the last reset, fed with each verdict line."""

    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    low: float = math.inf
    high: float = -math.inf
    total: float = 0.0
    since: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))
    refused_before: int = 0  # the handshakes' refusals at the last reset

    def add(self, label: str, record: dict) -> None:
        name = {"OK": "OkCount", "NG": "NgCount", "ERROR": "ErrorCount"}[label]
        self.counts[name] += 1
        ms = (record.get("timings_ms") or {}).get("total")
        if isinstance(ms, (int, float)) and math.isfinite(ms):
            self.counts["InspectionsTimed"] += 1
            self.low, self.high, self.total = min(self.low, ms), max(self.high, ms), self.total + ms

    def reset(self, refused_now: int) -> None:
        """Zero everything; the handshakes' own refusal counters run on, so their value now is the new zero."""
        fresh = Diagnostics(refused_before=refused_now)
        self.counts, self.low, self.high, self.total = fresh.counts, fresh.low, fresh.high, fresh.total
        self.since, self.refused_before = fresh.since, fresh.refused_before

    def values(self, refused_now: int) -> dict:
        timed = self.counts["InspectionsTimed"]
        out = {**self.counts, "TriggersRefused": max(0, refused_now - self.refused_before)}
        out = {name: value % 2**32 for name, value in out.items()}
        return out | {
            "InspectionTimeMinMs": self.low if timed else -1.0,
            "InspectionTimeAvgMs": self.total / timed if timed else -1.0,
            "InspectionTimeMaxMs": self.high if timed else -1.0,
            "ResetTime": self.since,
        }


class UaSystem:
    """The System folder's nodes on one server: added once, written when a value changes."""

    def __init__(self, asyncua):
        self.ua = asyncua.ua
        self.nodes: dict = {}
        self.written: dict = {}

    async def add(self, parent, ns: int, reset) -> None:
        """`await reset()` when a client calls ResetDiagnostics: on the server's loop, as every change of the
        diagnostics is (asyncua runs a method that is not a coroutine function on a thread of its own)."""
        ua = self.ua
        folder = await parent.add_folder(ua.NodeId("System", ns), ua.QualifiedName("System", ns))
        for name, (kind, first) in NODES.items():
            self.nodes[name] = await folder.add_variable(
                ua.NodeId(f"System.{name}", ns), ua.QualifiedName(name, ns), first, getattr(ua.VariantType, kind)
            )

        async def called(parent_id):  # no arguments, no outputs
            await reset()
            return []

        await folder.add_method(
            ua.NodeId("System.ResetDiagnostics", ns), ua.QualifiedName("ResetDiagnostics", ns), called, [], []
        )

    async def write(self, wanted: dict) -> None:
        for name, value in wanted.items():
            if self.written.get(name, object()) != value:
                await self.nodes[name].write_value(value, getattr(self.ua.VariantType, NODES[name][0]))
                self.written[name] = value
