"""Exponential moving average of a model's weights (evaluation and export use the EMA)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds `shadow`, a frozen copy of `model` whose parameters trail it.

    shadow = decay * shadow + (1 - decay) * param after every `update`; buffers (norm
    statistics, LeCam state...) are copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_param, param in zip(self.shadow.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param.detach(), 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.shadow.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)
