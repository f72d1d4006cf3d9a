"""lineside's offline export stage: PyTorch checkpoints -> a bundle (python -m export)."""

from .build import build_bundle

__all__ = ["build_bundle"]
