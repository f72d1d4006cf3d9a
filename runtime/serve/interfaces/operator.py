"""What the operator's page reads and does, per camera: its tile's state, its pictures, its feedback.

A camera here is anything with the workers of one camera (`state`, `inspector`,
`capture`, `source`, `results_log`, `settings`): serve's `cameras` when it runs
several, else the server itself. Every picture is served at the frame's own size
(the page never enlarges it); thumbnails are only ever shrunk. Reading is open
like the rest of /api; feedback needs the configured token (feedback.py).
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from ..frames.triggers import MAX_BODY
from ..judging.gallery import Layers
from ..results.records import strict_json
from .feedback import Feedback, Refused, authorised


def _json(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.json_response(data, status=status, dumps=strict_json, headers=headers)


def _jpeg(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


def unauthorised(what: str, token: str) -> web.Response:
    """401 saying how to send the token, or that none is set."""
    how = "send 'Authorization: Bearer TOKEN' or 'X-Lineside-Token: TOKEN' (the api_token setting)"
    why = how if token else "set api_token first"
    return _json({"error": f"{what}: {why}"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="lineside"'})


def source_state(camera) -> dict:
    """Where frames come from and how that stands: live, connecting, lost (a live source dropped) or ended
    (a recording read to its end), with the reason when not live."""
    capture, source = getattr(camera, "capture", None), getattr(camera, "source", None)
    out = {"spec": str(getattr(source, "spec", "")), "live": bool(getattr(source, "live", True))}
    if capture is None:
        return out | {"state": "unknown", "problem": ""}
    if capture.connected.is_set():
        state = "live"
    elif capture.finished.is_set():
        state = "lost" if out["live"] else "ended"
    else:
        state = "connecting" if capture.ident is None or capture.problem in ("", "not started") else "lost"
    return out | {"state": state, "problem": "" if state == "live" else capture.problem or ""}


def sink_states(cameras) -> list[dict]:
    """Each sink once (cameras may share one) and why it delivers nothing now: results that go nowhere (a
    broker refusing our password, a certificate it does not trust) must show where people look, not only in
    a counter."""
    out, seen = [], set()
    for cam in cameras:
        for sink in getattr(cam, "sinks", None) or ():
            if id(sink) in seen or not hasattr(sink, "condition"):
                continue
            seen.add(id(sink))
            problem = sink.condition()
            out.append({"sink": sink.label, "ok": not problem, "problem": problem})
    return out


class OperatorPage:
    """The page's view of serve: `box()` and `tiles()` for /api/status, `routes()` for pictures and feedback."""

    def __init__(self, server):
        self.server = server
        cameras = getattr(server, "cameras", None)
        self.cameras: dict[str, object] = dict(cameras) if cameras else {"": server}
        self.tokens = {key: _serve_setting(cam, "api_token") or "" for key, cam in self.cameras.items()}
        for cam in self.cameras.values():  # each camera's gallery as large as its setting says
            size = _serve_setting(cam, "ng_gallery")
            if size is not None:
                cam.state.gallery.resize(size)
        self.feedback = {
            key: Feedback(
                cam.state,
                getattr(cam, "results_log", None),
                getattr(cam, "inspector", None),
                _references_of(cam),
            )
            for key, cam in self.cameras.items()
        }

    def camera(self, request: web.Request):
        """(id, camera) named by ?camera=ID, the first camera without it; HTTPNotFound for an unknown id."""
        key = request.query.get("camera")
        if key is None:
            key = next(iter(self.cameras))
        if key not in self.cameras:
            known = ", ".join(repr(k) for k in self.cameras)
            raise web.HTTPNotFound(text=f"no camera {key!r}; cameras: {known}\n")
        return key, self.cameras[key]

    def box(self) -> dict:
        """What runs here, the same for every camera: bundle, each graph's precision and providers, uptime."""
        graphs = self.server.graphs()
        started = next(iter(self.cameras.values())).state.started
        return {
            "bundle_id": str(getattr(getattr(self.server, "detector", None), "bundle_id", "") or ""),
            "precisions": {name: g["precision"] for name, g in graphs.items()},
            "providers": sorted({p for g in graphs.values() for p in g["providers"]}),
            "started": started,
            "uptime_s": time.time() - started,
            "token_set": any(self.tokens.values()),
            "sinks": sink_states(self.cameras.values()),
        }

    def tiles(self) -> list[dict]:
        """One object per camera: everything its tile shows."""
        return [self.tile(key, cam) for key, cam in self.cameras.items()]

    def tile(self, key: str, cam) -> dict:
        state, query = cam.state, f"?camera={key}" if key else ""
        ready, problem = cam.ready()
        settings = getattr(cam, "settings", None)
        ng = [r | {"image": r["image"] + query} for r in state.ng_frames()]
        return {
            "id": key,
            "ready": ready,
            "problem": problem,
            "category": str(getattr(getattr(settings, "job", None), "category", "") or ""),
            "counters": cam.counters(),
            "fps": state.fps,
            "operating_point": state.operating_point,
            "latest": state.latest,
            "last_ng": state.last_ng,
            "source": source_state(cam),
            "history": state.history(),
            "ng": ng,
            "learning": self.feedback[key].status(),
            "stream": "/stream" + query,
            "frame": "/api/frame/latest.jpg" + query,
        }

    def routes(self) -> list:
        return [
            web.get("/api/frame/latest.jpg", self.latest_frame),
            web.get("/api/ng", self.ng_list),
            web.get("/api/ng/{run}/{frame_id:[0-9]{1,18}}.jpg", self.ng_image),
            web.post("/api/feedback", self.decide),
        ]

    async def latest_frame(self, request):
        """The newest overlay as one JPEG at the frame's own size; ?heatmap=0, ?outlines=0, ?banner=0 drop layers."""
        _, cam = self.camera(request)
        layers = Layers.of(request.query)
        _, jpeg = await asyncio.get_running_loop().run_in_executor(None, cam.state.next_jpeg, -1, 0.0, layers)
        if jpeg is None:
            return _json({"error": "no frame inspected yet"}, status=404)
        return _jpeg(jpeg)

    async def ng_list(self, request):
        return _json(self.camera(request)[1].state.ng_frames())

    async def ng_image(self, request):
        """A kept NG frame's overlay: full size, or ?width=N (a thumbnail: shrunk, never enlarged)."""
        _, cam = self.camera(request)
        run, frame_id, width = (
            request.match_info["run"],
            int(request.match_info["frame_id"]),
            request.query.get("width"),
        )
        if width is not None and not (width.isdigit() and 16 <= int(width) <= 4096):
            return _json({"error": f"width must be 16 to 4096 pixels, got {width[:20]!r}"}, status=400)
        kept = cam.state.gallery_frame(run, frame_id)
        if kept is None:
            return _json({"error": f"frame {run}/{frame_id} is not among the kept NG frames"}, status=404)
        size = int(width) if width else None
        draw = kept.overlay_jpeg
        jpeg = await asyncio.get_running_loop().run_in_executor(None, draw, Layers.of(request.query, False), size)
        return _jpeg(jpeg) if jpeg is not None else _json({"error": "the frame could not be drawn"}, status=500)

    async def decide(self, request):
        """POST /api/feedback[?camera=ID] {run, frame_id, decision, by[, add_reference]}, with the token."""
        key, _ = self.camera(request)
        token = self.tokens[key]  # a camera's own (the cameras file may set one), else the process's
        if not authorised(token, request.headers):
            return unauthorised("feedback changes what serve holds", token)
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return _json({"error": f"the body is over {MAX_BODY} bytes"}, status=413)
        try:
            line = self.feedback[key].decide(json.loads(body or b"null"))
        except (ValueError, RecursionError) as e:  # RecursionError: [[[[... nested past json's parser
            return _json({"error": f"the body is not a JSON object: {type(e).__name__}: {e}"}, status=400)
        except Refused as e:
            return _json({"error": str(e)}, status=e.status)
        except OSError as e:
            return _json({"error": f"the decision could not be written: {e}"}, status=503)
        return _json(line)


def _references_of(cam):
    settings = getattr(cam, "settings", None)
    return settings.job.references if settings is not None else None


def _serve_setting(cam, name: str):
    return getattr(getattr(getattr(cam, "settings", None), "serve", None), name, None)
