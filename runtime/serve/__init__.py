"""python -m runtime.serve: inspect a camera, stream, video or folder beside the line."""

from ..settings import ServeSettings, Settings
from .server import Server

__all__ = ["Server", "ServeSettings", "Settings"]
