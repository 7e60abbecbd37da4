"""A small 3D CNN classifier of the corpus's own classes: the domain feature network.

The embedded corpus is not Kinetics or ImageNet, and InceptionV3 / I3D weights may not be on
the machine, so evaluation needs a feature network that always exists and knows this domain.
This classifier is trained on the labelled training clips (stage `train_domain_classifier`);
its penultimate features give `fvd_domain` (whole clips) and `fid_domain` (single frames, as
T = 1 clips), and its predictions give the class accuracy of generated samples. These are
domain metrics: they are never reported as FID or FVD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.pretrained import DictConfig, Pretrained


@dataclass(frozen=True)
class DomainClassifierConfig(DictConfig):
    num_classes: int = 8
    channels: tuple[int, ...] = (16, 32, 64, 64)  # one strided block per entry
    feature_dim: int = 128

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not self.channels or min(self.channels) < 1 or self.feature_dim < 1:
            raise ValueError(f"channels and feature_dim must be positive, got {self}")


def conv_block(dim_in: int, dim_out: int) -> nn.Sequential:
    """Halve H and W with a (3, 4, 4) conv; time keeps its length, so T = 1 clips work too."""
    return nn.Sequential(
        nn.Conv3d(dim_in, dim_out, (3, 4, 4), stride=(1, 2, 2), padding=1),
        nn.GroupNorm(min(8, dim_out), dim_out),
        nn.SiLU(),
    )


class DomainClassifier(nn.Module, Pretrained):
    config_class = DomainClassifierConfig
    checkpoint_label = "domain classifier"

    def __init__(self, config: DomainClassifierConfig):
        super().__init__()
        self.config = config
        dims = (3, *config.channels)
        self.blocks = nn.Sequential(
            *(conv_block(a, b) for a, b in zip(dims, dims[1:], strict=False))
        )
        self.project = nn.Linear(dims[-1], config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, video: Tensor) -> Tensor:
        """float [B, 3, T, H, W] in [-1, 1] -> [B, feature_dim] (mean over time and space)."""
        hidden = self.blocks(video).mean(dim=(2, 3, 4))
        return torch.nn.functional.silu(self.project(hidden))

    def forward(self, video: Tensor) -> Tensor:
        """float [B, 3, T, H, W] in [-1, 1] -> class logits [B, num_classes]."""
        return self.head(self.features(video))
