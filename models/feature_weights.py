"""What the evaluation feature networks (FID InceptionV3, FVD I3D) share: strict loading of
third-party weight files and the uint8 -> [-1, 1] input conversion.

The weights are never downloaded: the user points params at a local file, either
`.safetensors` or a torch state dict (`.pt` / `.pth`, loaded with `weights_only=True`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

MAX_LISTED = 5  # offending keys named in an error message
Module = TypeVar("Module", bound=nn.Module)


class FeatureNetError(ValueError):
    """A feature-network weights file is missing, unreadable or made for another network."""


def read_state_dict(path: str | Path, architecture: str) -> dict[str, Tensor]:
    """Tensors of a `.safetensors` file or a torch state dict (optionally under 'state_dict')."""
    path = Path(path)
    if not path.is_file():
        raise FeatureNetError(f"{architecture} weights: {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    # safetensors and the unpickler fail in many ways on a foreign file (SafetensorError,
    # UnpicklingError, RuntimeError, EOFError, ...); all of them mean "not a weights file".
    except Exception as err:
        raise FeatureNetError(
            f"{path} is not a {architecture} weights file (.safetensors or torch state dict): {err}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FeatureNetError(f"{path} holds no state dict of tensors for {architecture}")
    return state


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > MAX_LISTED else shown


def check_state_dict(
    model: nn.Module, state: dict[str, Tensor], path: Path | str, architecture: str
) -> None:
    """Raise FeatureNetError unless `state` has exactly the model's tensors and shapes.

    BatchNorm `num_batches_tracked` counters may be absent: old checkpoints (the published
    FID Inception and I3D ports among them) predate them, and eval mode never reads them.
    """
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(v.shape)} vs expected {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    )
    problems = [
        f"{label} [{_listed(items)}]"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        raise FeatureNetError(f"{path} is not a {architecture} state dict: " + "; ".join(problems))


def load_weights(model: Module, path: str | Path, architecture: str) -> Module:
    """Load a checked weights file into `model` (on CPU) and return it in eval mode."""
    state = read_state_dict(path, architecture)
    check_state_dict(model, state, path, architecture)
    model.load_state_dict(state, strict=False)  # checked above; only the optional keys can lack
    return model.eval()


def frames_to_input(
    frames: np.ndarray | Tensor, size: int, ndim: int, device: torch.device
) -> Tensor:
    """uint8 frames [..., H, W, 3] with `ndim` dims -> float [..., 3, size, size] in [-1, 1].

    Bilinear resize (align_corners=False, no antialiasing), as the standard FID/FVD code does.
    """
    frames = frames if isinstance(frames, Tensor) else torch.tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != ndim or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 frames with {ndim} dims, channels last (RGB), "
            f"got {frames.dtype} of shape {tuple(frames.shape)}"
        )
    *lead, height, width, _ = frames.shape
    x = frames.to(device).reshape(-1, height, width, 3).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).reshape(*lead, 3, size, size)
