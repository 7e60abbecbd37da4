"""Tokenizer training losses: reconstruction, GAN (hinge D / non-saturating G), LeCam, LPIPS.

The perceptual loss needs pretrained weights; they come from a local safetensors file only
(no downloads), see build_perceptual_loss.
"""

from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.feature_weights import check_state_dict, read_state_dict


def reconstruction_loss(recon: Tensor, target: Tensor, kind: Literal["l1", "l2"] = "l2") -> Tensor:
    """Mean pixel loss. "l2" (mean squared error, the default) or "l1" (mean absolute error,
    the taming-transformers VQGAN choice, more tolerant of outliers and less blurry)."""
    if kind == "l2":
        return F.mse_loss(recon, target)
    if kind == "l1":
        return F.l1_loss(recon, target)
    raise ValueError(f"reconstruction loss kind must be 'l1' or 'l2', got {kind!r}")


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))) (no 1/2 factor)."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def non_saturating_generator_loss(fake_logits: Tensor) -> Tensor:
    """mean(-log sigmoid(D(G(z)))) = mean(softplus(-D(G(z))))."""
    return F.softplus(-fake_logits).mean()


class LeCamEMA(nn.Module):
    """LeCam regulariser (Tseng et al., 2021) with EMAs of the mean real and fake logits.

    Call update(real, fake) each discriminator step, then add weight * penalty(real, fake) to
    the discriminator loss. The first update copies the means (no bias towards a zero init);
    later ones do ema = decay * ema + (1 - decay) * mean. Under data-parallel training the
    means are those of the global batch (averaged over workers), so every worker holds the
    same EMAs, as one process would, and rank 0's checkpoint restores them all. State lives in
    buffers, so it is saved with the module's state_dict.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, real_logits: Tensor, fake_logits: Tensor) -> None:
        decay = self.decay if self.num_updates > 0 else 0.0
        means = torch.stack([real_logits.float().mean(), fake_logits.float().mean()])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(means)
            means /= dist.get_world_size()
        self.ema_real.mul_(decay).add_((1 - decay) * means[0])
        self.ema_fake.mul_(decay).add_((1 - decay) * means[1])
        self.num_updates += 1

    def penalty(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """mean(relu(D(x) - ema_fake)^2) + mean(relu(ema_real - D(G(z)))^2)."""
        real_term = F.relu(real_logits.float() - self.ema_fake).pow(2).mean()
        fake_term = F.relu(self.ema_real - fake_logits.float()).pow(2).mean()
        return real_term + fake_term


# torchvision vgg16().features: numbers are 3x3 conv widths (each followed by ReLU), "M" max-pool
_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]
_VGG16_LAYOUT += [512, 512, 512, "M"]
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # features indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_WIDTHS = (64, 128, 256, 512, 512)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for spec in _VGG16_LAYOUT:
        if spec == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, spec, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = spec
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    """LPIPS (Zhang et al., 2018), VGG16 variant, in plain torch; frozen, always in eval mode.

    State dict keys: `features.{i}.weight|bias` exactly as torchvision's `vgg16().features`
    (so its `features.*` entries load unchanged) and `lins.{k}.weight` of shape [1, C_k, 1, 1],
    the learned per-channel layer weights (lpips' `lin{k}.model.1.weight`).
    """

    def __init__(self):
        super().__init__()
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_WIDTHS)
        # LPIPS input scaling from [-1, 1] to the statistics VGG was trained with
        shift = torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # frozen feature network: never leaves eval mode

    def _taps(self, x: Tensor) -> list[Tensor]:
        h = (x - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.features[: _LPIPS_TAPS[-1] + 1]):
            h = layer(h)
            if i in _LPIPS_TAPS:
                taps.append(F.normalize(h, dim=1, eps=1e-10))  # unit vector per position
        return taps

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        """Mean LPIPS distance over samples (and frames). Inputs in [-1, 1]: [B, 3, T, H, W]
        (scored frame by frame) or [B, 3, H, W]."""
        if recon.ndim == 5:
            recon = rearrange(recon, "b c t h w -> (b t) c h w")
            target = rearrange(target, "b c t h w -> (b t) c h w")
        n = recon.shape[0]
        distance = recon.new_zeros(n)
        for lin, tap in zip(self.lins, self._taps(torch.cat([recon, target])), strict=True):
            diff = (tap[:n] - tap[n:]).pow(2)  # [N, C, h, w]
            distance = distance + lin(diff).mean(dim=(1, 2, 3))  # spatial average
        return distance.mean()


def build_perceptual_loss(weights_path: str | None) -> PerceptualLoss | None:
    """PerceptualLoss with weights from a local safetensors file; None (loss off) when no path.

    The file must hold exactly PerceptualLoss().state_dict()'s keys and shapes: VGG16
    `features.*` (torchvision layout, ImageNet-trained) and LPIPS heads `lins.0..4.weight`.
    """
    if weights_path is None:
        return None
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"perceptual loss weights not found at '{path}': expected a safetensors file with "
            "VGG16 'features.*' tensors (torchvision vgg16().features layout) and LPIPS linear "
            "heads 'lins.0.weight' .. 'lins.4.weight'; set the path to null to train without "
            "the perceptual loss"
        )
    model = PerceptualLoss()
    state = read_state_dict(path, "LPIPS-VGG16 perceptual loss")
    check_state_dict(model, state, path, "LPIPS-VGG16 perceptual loss")
    model.load_state_dict(state)
    return model
