"""Inflating a 2D image tokenizer into the causal 3D tokenizer (last-slice inflation)."""

import dataclasses

import pytest
import torch

from models.inflation import image_tokenizer_config, inflate_2d_into_3d
from models.tokenizer import MagvitTokenizer, TokenizerConfig

CPU = TokenizerConfig.preset("cpu")


@pytest.fixture(scope="module")
def models() -> tuple[MagvitTokenizer, MagvitTokenizer]:
    torch.manual_seed(0)
    model_2d = MagvitTokenizer(image_tokenizer_config(CPU)).eval()
    with torch.no_grad():  # perturb so zero-initialised layers are not trivially equal
        for p in model_2d.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model_3d = inflate_2d_into_3d(model_2d, MagvitTokenizer(CPU).eval())
    return model_2d, model_3d


def image(batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 1, 64, 64, generator=gen) * 2 - 1


def test_2d_model_is_per_frame():
    cfg = image_tokenizer_config(CPU)
    assert cfg.temporal_kernel == 1 and cfg.temporal_factor == 1
    model = MagvitTokenizer(cfg)
    kernels = [m.weight.shape[2] for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert set(kernels) == {1}


def test_inflated_kernels_live_in_last_temporal_slice(models):
    model_2d, model_3d = models
    # conv_in is per frame at full resolution (spatial_levels): copied as it is
    assert torch.equal(model_3d.encoder.conv_in.weight, model_2d.encoder.conv_in.weight)
    pairs = [
        (conv_2d, conv_3d)
        for conv_2d, conv_3d in zip(model_2d.modules(), model_3d.modules(), strict=True)
        if isinstance(conv_3d, torch.nn.Conv3d) and conv_3d.weight.shape[2] == 3
    ]
    assert len(pairs) > 5
    for conv_2d, conv_3d in pairs:
        assert torch.equal(conv_3d.weight[:, :, -1:], conv_2d.weight)
        assert not conv_3d.weight[:, :, :-1].any()


def test_inflated_model_reproduces_2d_model_on_images(models):
    model_2d, model_3d = models
    x = image()
    with torch.no_grad():
        (recon_2d, out_2d), (recon_3d, out_3d) = model_2d(x), model_3d(x)
    assert torch.equal(out_3d.indices, out_2d.indices)
    torch.testing.assert_close(recon_3d, recon_2d, rtol=1e-4, atol=1e-5)
    uint8 = ((x.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(model_3d.encode(uint8), model_2d.encode(uint8))


def test_inflated_model_reconstructs_static_clip_like_the_image(models):
    """Temporal downsamplers start as frame subsampling, upsamplers as frame repetition."""
    model_2d, model_3d = models
    x = image()
    with torch.no_grad():
        recon_2d, out_2d = model_2d(x)
        recon_3d, out_3d = model_3d(x.repeat(1, 1, 9, 1, 1))
    assert recon_3d.shape == (2, 3, 9, 64, 64)
    assert torch.equal(out_3d.indices, out_2d.indices.repeat(1, 3, 1, 1))
    torch.testing.assert_close(recon_3d, recon_2d.repeat(1, 1, 9, 1, 1), rtol=1e-4, atol=1e-5)


def test_inflation_rejects_mismatched_models():
    model_3d = MagvitTokenizer(CPU)
    with pytest.raises(ValueError, match="image_tokenizer_config"):
        inflate_2d_into_3d(MagvitTokenizer(CPU), model_3d)  # not a 2D model
    wider = image_tokenizer_config(dataclasses.replace(CPU, channels=32))
    with pytest.raises(ValueError, match="image_tokenizer_config"):
        inflate_2d_into_3d(MagvitTokenizer(wider), model_3d)
