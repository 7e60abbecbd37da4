"""Initialise the causal 3D video tokenizer from a 2D image tokenizer (paper appendix A.1).

The image tokenizer is the same MagvitTokenizer built with `image_tokenizer_config`: temporal
kernel 1 and no temporal down/upsampling, i.e. every layer acts on each frame alone. Its
state dict then has the same keys as the 3D model's, and inflation maps each tensor:

- conv kernels [out, in, 1, kh, kw] go into the temporally LAST slice of the 3D kernel
  [out, in, kt, kh, kw], other slices zero. With causal padding the last slice is the one
  that sees the current frame, so every inflated conv is the 2D conv applied per frame.
- temporal downsamplers (strided in time in 3D, not in 2D) are convs too and get the same
  rule, so at initialisation they keep frame s*j of the input (frame subsampling).
- temporal depth-to-space upsamplers emit s times more channels in 3D (one group per
  sub-frame); the 2D weights are copied into every sub-frame group, so at initialisation
  they repeat each latent frame s times (nearest upsampling; the first copy of frame 0 is
  the one dropped).
- everything else (norms, LFQ has no weights, the VQ codebook) is copied as is.

Consequences, tested in tests/test_inflation.py: on a T = 1 input the inflated model gives
exactly the 2D model's tokens and reconstruction, and on a static clip every frame is
reconstructed as the 2D model reconstructs the image.
"""

import dataclasses

import torch
from einops import repeat

from models.causal import DepthToSpaceUpsample
from models.tokenizer import MagvitTokenizer, TokenizerConfig


def image_tokenizer_config(config: TokenizerConfig) -> TokenizerConfig:
    """The per-frame (2D) tokenizer matching `config`: temporal kernel 1, no temporal strides."""
    return dataclasses.replace(
        config,
        temporal_kernel=1,
        temporal_downsample=(False,) * len(config.temporal_downsample),
        num_frames=1,
    )


@torch.no_grad()
def inflate_2d_into_3d(model_2d: MagvitTokenizer, model_3d: MagvitTokenizer) -> MagvitTokenizer:
    """Overwrite every weight of `model_3d` with the inflated weights of `model_2d`."""
    expected = image_tokenizer_config(model_3d.config)
    if model_2d.config != expected:
        raise ValueError(
            f"model_2d must be built from image_tokenizer_config(model_3d.config) = {expected}, "
            f"got {model_2d.config}"
        )
    source = model_2d.state_dict()
    modules_3d = dict(model_3d.named_modules())
    inflated = {}
    for key, target in model_3d.state_dict().items():
        weight = source[key]
        owner = modules_3d.get(key.rsplit(".", 2)[0])  # "...upsample.conv.weight" -> upsampler
        if isinstance(owner, DepthToSpaceUpsample):
            # out channels are (c st sh sw) in 3D, (c sh sw) in 2D: copy into every sub-frame
            weight = repeat(
                weight, "(c s) ... -> (c st s) ...", st=owner.time_factor, s=owner.space_factor**2
            )
        if target.ndim == 5:  # conv kernel [out, in, kt, kh, kw]
            earlier = weight.new_zeros(*weight.shape[:2], target.shape[2] - 1, *weight.shape[3:])
            weight = torch.cat([earlier, weight], dim=2)
        if weight.shape != target.shape:
            raise ValueError(
                f"cannot inflate {key}: {tuple(weight.shape)} -> {tuple(target.shape)}"
            )
        inflated[key] = weight
    model_3d.load_state_dict(inflated)
    return model_3d
