"""python -m runtime.serve: inspect a camera, stream, video or folder beside the line."""

from .server import Server
from ..settings import ServeSettings, Settings

__all__ = ["Server", "ServeSettings", "Settings"]
