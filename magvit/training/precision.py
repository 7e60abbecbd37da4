"""Mixed precision for both trainers: the `bf16` setting of train_tokenizer / train_mlm."""

from __future__ import annotations

import contextlib

import torch

from magvit.params import BF16Setting


def use_bf16(setting: BF16Setting, device: torch.device) -> bool:
    """on: always (autocast works on CPU too, slower there; it tests the GPU path); auto: on
    for CUDA devices that support bf16; off: never."""
    if setting == "on":
        return True
    return setting == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when enabled; losses are taken in float32 by the callers."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
