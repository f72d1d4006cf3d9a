"""lineside's runtime: runs a bundle on the box beside the line. Never imports torch."""

from .bundle import Bundle
from .manifest import BundleError, Manifest
from .session import OnnxSession
from .tokenizer import ClipTokenizer

__all__ = ["Bundle", "BundleError", "ClipTokenizer", "Manifest", "OnnxSession"]
