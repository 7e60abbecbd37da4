"""Causal 3D blocks: output frame f must not depend on input frames after f."""

import pytest
import torch
from torch import nn

from models.causal import (
    CausalConv3d,
    DepthToSpaceUpsample,
    FrameGroupNorm,
    ResBlock3d,
    SpaceTimeDownsample,
    causal_resize,
)


def changed_frames(module: nn.Module, x: torch.Tensor, frame: int) -> list[int]:
    """Output frames that change when input frames >= `frame` are replaced by noise."""
    perturbed = x.clone()
    perturbed[:, :, frame:] = torch.randn_like(perturbed[:, :, frame:])
    with torch.no_grad():
        diff = (module(x) - module(perturbed)).abs().amax(dim=(0, 1, 3, 4))
    return [f for f, d in enumerate(diff.tolist()) if d > 1e-6]


@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
def test_causal_conv_keeps_shape_and_is_causal(pad_mode):
    torch.manual_seed(0)
    conv = CausalConv3d(4, 6, 3, pad_mode=pad_mode)
    x = torch.randn(2, 4, 7, 8, 8)
    assert conv(x).shape == (2, 6, 7, 8, 8)
    for frame in range(1, 7):
        assert changed_frames(conv, x, frame) == list(range(frame, 7))


def test_causal_conv_padding_modes_on_first_frame():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, (3, 1, 1), pad_mode="replicate")
    x = torch.randn(1, 2, 1, 4, 4)
    static = nn.functional.conv3d(x.repeat(1, 1, 3, 1, 1), conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), static)  # frame 0 sees three copies of itself
    conv.pad_mode = "zeros"
    only_last = nn.functional.conv3d(x, conv.weight[:, :, -1:], conv.bias)
    torch.testing.assert_close(conv(x), only_last)  # frame 0 sees zeros before it


def test_frame_group_norm_uses_per_frame_statistics():
    torch.manual_seed(0)
    norm = FrameGroupNorm(2, 4)
    x = torch.randn(2, 4, 5, 6, 6)
    x[:, :, 3:] *= 100  # very different later frames must not change earlier outputs
    out = norm(x)
    for f in range(5):
        torch.testing.assert_close(out[:, :, f], nn.functional.group_norm(x[:, :, f], 2))
    assert changed_frames(norm, x, 3) == [3, 4]


def test_resblock_is_causal():
    torch.manual_seed(0)
    block = ResBlock3d(8, 16, groups=4)
    x = torch.randn(1, 8, 6, 8, 8)
    assert block(x).shape == (1, 16, 6, 8, 8)
    assert changed_frames(block, x, 2) == [2, 3, 4, 5]


@pytest.mark.parametrize("t", [0, 1, 2, 4])
def test_downsample_maps_1_plus_2t_to_1_plus_t(t):
    down = SpaceTimeDownsample(4, 8, space_factor=2, time_factor=2)
    x = torch.randn(1, 4, 1 + 2 * t, 8, 8)
    assert down(x).shape == (1, 8, 1 + t, 4, 4)
    space_only = SpaceTimeDownsample(4, 8, space_factor=2, time_factor=1)
    assert space_only(x).shape == (1, 8, 1 + 2 * t, 4, 4)


def test_downsample_frame_dependencies():
    torch.manual_seed(0)
    down = SpaceTimeDownsample(4, 4, time_factor=2)
    x = torch.randn(1, 4, 9, 8, 8)
    # output frame j sees input frames <= 2j: frame 0 alone, frames 1-2 -> output 1, ...
    assert changed_frames(down, x, 1) == [1, 2, 3, 4]
    assert changed_frames(down, x, 3) == [2, 3, 4]
    assert changed_frames(down, x, 5) == [3, 4]


def test_downsample_rejects_bad_frame_count():
    with pytest.raises(ValueError, match="1 \\+ 2\\*k frames"):
        SpaceTimeDownsample(4, 4, time_factor=2)(torch.randn(1, 4, 4, 8, 8))


@pytest.mark.parametrize("t", [0, 1, 2, 4])
def test_upsample_maps_1_plus_t_to_1_plus_2t(t):
    up = DepthToSpaceUpsample(8, 4, space_factor=2, time_factor=2)
    x = torch.randn(1, 8, 1 + t, 4, 4)
    assert up(x).shape == (1, 4, 1 + 2 * t, 8, 8)
    space_only = DepthToSpaceUpsample(8, 4, space_factor=2, time_factor=1)
    assert space_only(x).shape == (1, 4, 1 + t, 8, 8)


def test_upsample_output_frame_f_comes_from_input_frame_ceil_f_over_s():
    torch.manual_seed(0)
    up = DepthToSpaceUpsample(4, 4, time_factor=2)
    x = torch.randn(1, 4, 4, 4, 4)
    assert changed_frames(up, x, 0) == list(range(7))
    assert changed_frames(up, x, 1) == list(range(1, 7))
    assert changed_frames(up, x, 2) == [3, 4, 5, 6]
    assert changed_frames(up, x, 3) == [5, 6]


def test_upsample_is_depth_to_space():
    up = DepthToSpaceUpsample(3, 1, space_factor=2, time_factor=2)
    x = torch.randn(1, 3, 2, 1, 1)
    y = up(x)  # [1, 1, 3, 2, 2]: channel group (st, sh, sw) of input frame j -> sub-pixel
    channels = up.conv(x)[0, :, :, 0, 0]  # [8, 2] = (st sh sw) x frames
    torch.testing.assert_close(y[0, 0, 0].flatten(), channels[4:, 0])  # frame 0: last sub-frame
    torch.testing.assert_close(y[0, 0, 1].flatten(), channels[:4, 1])
    torch.testing.assert_close(y[0, 0, 2].flatten(), channels[4:, 1])


def test_causal_resize_frame_mapping():
    x = torch.arange(3.0).view(1, 1, 3, 1, 1)  # latent frames 0, 1, 2
    out = causal_resize(x, (9, 2, 2))
    assert out.shape == (1, 1, 9, 2, 2)
    assert out[0, 0, :, 0, 0].tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert causal_resize(x[:, :, :1], (1, 4, 4)).shape == (1, 1, 1, 4, 4)
    with pytest.raises(ValueError, match="causally"):
        causal_resize(x, (8, 2, 2))
