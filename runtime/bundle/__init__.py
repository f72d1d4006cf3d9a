"""The bundle room: the manifest contract, a verified bundle folder, and its onnxruntime sessions.

Everything here rests on the manifest alone: the preprocessing and tokenizer that make a graph's
inputs are part of the contract too. `python -m runtime.check B` (runtime/check.py, above detect/)
proves a bundle loads and runs on this box.
"""

from .loader import Bundle
from .manifest import BundleError, Component, Manifest

__all__ = ["Bundle", "BundleError", "Component", "Manifest"]
