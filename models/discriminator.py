"""3D CNN discriminator with anti-aliased (blur-pool) downsampling, MAGVIT-v2 section 3.2.

Trained from scratch (not inflated from an image model). Residual downsampling blocks in the
StyleGAN style, no normalisation layers, LeakyReLU(0.2). Downsampling is a fixed binomial blur
followed by stride 2 (Zhang, "Making convolutional networks shift-invariant again", 2019).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BlurPool3d(nn.Module):
    """Depthwise [1, 2, 1] x [1, 2, 1] x [1, 2, 1] / 64 blur, then stride 2, reflect padding.

    Output size per downsampled dimension is ceil(n / 2). Time is downsampled only when
    `downsample_time` is set and the input has more than one frame; otherwise the blur and the
    stride act on height and width only (so images, T = 1, pass through with T = 1).
    The [1, 2, 1] filter has a zero at the Nyquist frequency, so a +-1 checkerboard vanishes.
    Height and width must be >= 2 (reflect padding).
    """

    def __init__(self, channels: int, downsample_time: bool = True):
        super().__init__()
        self.channels = channels
        self.downsample_time = downsample_time
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4
        spatial = taps[:, None] * taps[None, :]  # [3, 3]
        kernel_thw = taps[:, None, None] * spatial[None]  # [3, 3, 3]
        self.register_buffer(
            "kernel_thw", kernel_thw.expand(channels, 1, 3, 3, 3).clone(), persistent=False
        )
        self.register_buffer(
            "kernel_hw", spatial.expand(channels, 1, 1, 3, 3).clone(), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, T, H, W] -> [B, C, T', H', W'], H' = ceil(H / 2), T' = ceil(T / 2) or T."""
        if self.downsample_time and x.shape[2] > 1:
            x = F.pad(x, (1, 1, 1, 1, 1, 1), mode="reflect")
            kernel, stride = self.kernel_thw, (2, 2, 2)
        else:
            x = F.pad(x, (1, 1, 1, 1, 0, 0), mode="reflect")
            kernel, stride = self.kernel_hw, (1, 2, 2)
        return F.conv3d(x, kernel.to(x.dtype), stride=stride, groups=self.channels)


@dataclass
class DiscriminatorConfig:
    in_channels: int = 3
    channels: int = 64  # width of the first conv; block i has channels * channel_multipliers[i]
    channel_multipliers: tuple[int, ...] = (2, 4, 4, 4)  # one 2x downsampling block each
    downsample_time: bool = True  # blur-pool time too (skipped whenever T is already 1)
    negative_slope: float = 0.2


class DownBlock(nn.Module):
    """Residual block: conv -> act -> blur-pool -> conv -> act, plus blur-pooled 1x1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int, config: DiscriminatorConfig):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.down = BlurPool3d(out_channels, config.downsample_time)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_down = BlurPool3d(in_channels, config.downsample_time)
        self.skip = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        self.act = nn.LeakyReLU(config.negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.conv1(x))
        h = self.act(self.conv2(self.down(h)))
        return (h + self.skip(self.skip_down(x))) / math.sqrt(2)


class Discriminator3d(nn.Module):
    """Video [B, 3, T, H, W] in [-1, 1] -> patch logits [B, T', H', W'].

    Each block halves H and W (ceil) and, while T > 1 and downsample_time is set, T. The losses
    in models.losses average over all logits, so images (T = 1) and clips share one network.
    """

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        widths = [config.channels] + [config.channels * m for m in config.channel_multipliers]
        self.conv_in = nn.Conv3d(config.in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            DownBlock(c_in, c_out, config)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.conv_out = nn.Conv3d(widths[-1], widths[-1], 3, padding=1)
        self.to_logits = nn.Conv3d(widths[-1], 1, 1)
        self.act = nn.LeakyReLU(config.negative_slope)

    def forward(self, video: Tensor) -> Tensor:
        h = self.act(self.conv_in(video))  # [B, C, T, H, W]
        for block in self.blocks:
            h = block(h)
        h = self.act(self.conv_out(h))
        return self.to_logits(h).squeeze(1)  # [B, T', H', W']
