"""The handshake (handshake.py) over serve's OPC UA server: per camera, nodes the PLC writes and nodes it reads.

Beside the verdict variables (opcua.py), under Objects/Lineside/<camera>, node ids
`ns=<index>;s=Lineside.<camera>.<Name>`; docs/plc.md has the table and the timing:

    written by the PLC   Trigger (Boolean), TriggerPartId (String), ResultAck (UInt32), RecipeIndex (UInt16)
    read by the PLC      TriggerReady, Busy, ResultReady (Boolean), ResultId (UInt32), ResultVerdict
                         (String), ResultCode (UInt16: 0 OK, 1 NG, 2 ERROR), ResultReject (Boolean),
                         ResultScore (Double, -1 without one), ResultReason (UInt16), ResultReasonText
                         (String), ResultFrameId (Int64), ResultPartId (String), ResultSeq (Int64: the
                         line's seq in the results log), Pending (UInt16), TriggersAccepted and
                         TriggersRefused (UInt32),
                         State (String: Ready, Executing, Full, Blocked), StateWhy (String),
                         RecipeActive (UInt16: the recipe in force)

The PLC's nodes are read every POLL_S on the server's own loop, so a write is seen
within that (hold Trigger until TriggersAccepted or TriggersRefused moves). The result
fields are written before ResultId, and ResultId before ResultReady.
"""

from __future__ import annotations

import logging
import time

from .handshake import Handshake, Refused

log = logging.getLogger("lineside.serve")

POLL_S = 0.01
INPUTS = {"Trigger": ("Boolean", False), "TriggerPartId": ("String", ""), "ResultAck": ("UInt32", 0)}
INPUTS["RecipeIndex"] = ("UInt16", 0)
OUTPUTS = {
    "TriggerReady": ("Boolean", False),
    "Busy": ("Boolean", False),
    "ResultReady": ("Boolean", False),
    "ResultId": ("UInt32", 0),
    "ResultVerdict": ("String", ""),
    "ResultCode": ("UInt16", 0),
    "ResultReject": ("Boolean", False),
    "ResultScore": ("Double", -1.0),
    "ResultReason": ("UInt16", 0),
    "ResultReasonText": ("String", ""),
    "ResultFrameId": ("Int64", 0),
    "ResultPartId": ("String", ""),
    "ResultSeq": ("Int64", 0),
    "Pending": ("UInt16", 0),
    "TriggersAccepted": ("UInt32", 0),
    "TriggersRefused": ("UInt32", 0),
    "State": ("String", ""),
    "StateWhy": ("String", ""),
    "RecipeActive": ("UInt16", 0),
}
RESULT_FIELDS = ("ResultVerdict", "ResultCode", "ResultReject", "ResultScore", "ResultReason", "ResultReasonText")
RESULT_FIELDS += ("ResultFrameId", "ResultPartId", "ResultSeq", "ResultId", "ResultReady")  # the order they go in


def values(view) -> dict:
    """Every output node's value for a handshake View."""
    r = view.result
    return {
        "ResultVerdict": r.verdict if r else "",
        "ResultCode": r.code if r else 0,
        "ResultReject": r.reject if r else False,
        "ResultScore": -1.0 if r is None or r.score is None else r.score,
        "ResultReason": r.reason_code if r else 0,
        "ResultReasonText": r.reason if r else "",
        "ResultFrameId": r.frame_id if r else 0,
        "ResultPartId": r.part_id if r else "",
        "ResultSeq": r.seq if r else 0,
        "ResultId": r.id if r else 0,
        "ResultReady": view.result_ready,
        "Busy": view.busy,
        "TriggerReady": view.trigger_ready,
        "Pending": min(view.pending, 65535),
        "TriggersAccepted": view.accepted % 2**32,
        "TriggersRefused": view.refused % 2**32,
        "State": view.state,
        "StateWhy": view.why,
        "RecipeActive": view.recipe_active,
    }


class UaConversation:
    """One camera's handshake nodes and the step that reads the PLC's and writes ours."""

    def __init__(self, asyncua, handshake: Handshake, camera: str):
        self.ua, self.handshake, self.camera = asyncua.ua, handshake, camera
        self.nodes: dict = {}
        self.written: dict = {}  # node -> value last written
        self.acked = 0  # ResultAck as last read
        self.logged = -1e9  # when a refusal was last logged

    async def add(self, folder, ns: int) -> None:
        ua = self.ua
        for name, (kind, first) in {**INPUTS, **OUTPUTS}.items():
            node = await folder.add_variable(
                ua.NodeId(f"Lineside.{self.camera}.{name}", ns),
                ua.QualifiedName(name, ns),
                first,
                getattr(ua.VariantType, kind),
            )
            if name in INPUTS:
                await node.set_writable()
            self.nodes[name] = node
        await self._write(self.handshake.view())

    async def step(self) -> None:
        """Read what the PLC wrote, feed the handshake, write what changed. RecipeIndex first: an index and a
        trigger written together mean that part in that recipe."""
        self.handshake.recipe_index(int(await self.nodes["RecipeIndex"].read_value() or 0))
        level = bool(await self.nodes["Trigger"].read_value())
        part = str(await self.nodes["TriggerPartId"].read_value() or "")
        try:
            self.handshake.trigger_level(level, part)
        except Refused as e:  # counted and shown in TriggersRefused and StateWhy; logged at most every 10 s
            if time.monotonic() - self.logged > 10.0:
                self.logged = time.monotonic()
                log.warning("camera %s: PLC trigger refused: %s", self.camera, e)
        ack = int(await self.nodes["ResultAck"].read_value() or 0)
        if ack != self.acked:
            self.acked = ack
            self.handshake.ack(ack)
        self.handshake.tick()
        await self._write(self.handshake.view())

    async def _write(self, view) -> None:
        kinds = self.ua.VariantType
        wanted = values(view)
        order = [*RESULT_FIELDS, *(n for n in OUTPUTS if n not in RESULT_FIELDS)]
        for name in order:
            if self.written.get(name, object()) != wanted[name]:
                await self.nodes[name].write_value(wanted[name], getattr(kinds, OUTPUTS[name][0]))
                self.written[name] = wanted[name]
