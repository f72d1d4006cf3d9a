"""The bundle room: the manifest contract, a verified bundle folder, and its onnxruntime sessions.

`python -m runtime.bundle B` (also `python -m runtime.check B`) proves a bundle
loads and runs on this box.
"""

from .loader import Bundle
from .manifest import BundleError, Component, Manifest

__all__ = ["Bundle", "BundleError", "Component", "Manifest"]
