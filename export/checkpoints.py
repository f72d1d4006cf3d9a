"""Checkpoint loading with errors that say what did not fit, and where weights came from."""

from __future__ import annotations

from pathlib import Path

import torch

from runtime.bundle.loader import file_sha256


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pt/.pth/.bin/.safetensors file, unwrapping {"state_dict": ...}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a bad file
        raise ValueError(f"checkpoint {path} cannot be read as a state dict: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state


def mismatch_report(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], limit: int = 5) -> str:
    """Name the first missing, unexpected and wrongly shaped keys, with counts."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} expected {tuple(expected[k].shape)} found {tuple(found[k].shape)}"
        for k in expected
        if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts) or "keys and shapes match"


def load_exact(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict) with a readable error naming expected and found keys."""
    expected = model.state_dict()
    report = mismatch_report(expected, state)
    if report != "keys and shapes match":
        raise ValueError(f"{what} does not fit this architecture: {report}")
    model.load_state_dict(state, strict=True)


def file_source(path: Path) -> dict:
    """Provenance of a local checkpoint file for the manifest."""
    path = Path(path)
    return {"checkpoint": path.name, "checkpoint_sha256": file_sha256(path)}
