import pytest
import torch
from einops import rearrange

from models.vq import VectorQuantizer, VQConfig


def make_vq(codebook_size: int = 16, dim: int = 4, **kwargs) -> VectorQuantizer:
    torch.manual_seed(0)
    vq = VectorQuantizer(VQConfig(codebook_size=codebook_size, dim=dim, **kwargs))
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.randn(codebook_size, dim))
    return vq


def test_returns_nearest_codeword():
    vq = make_vq()
    z = torch.randn(2, 4, 3, 5, 5)
    out = vq(z)
    assert out.indices.shape == (2, 3, 5, 5)
    assert out.indices.dtype == torch.int64
    assert out.codes.shape == z.shape

    flat = rearrange(z, "b c t h w -> (b t h w) c")
    expected = torch.cdist(flat, vq.codebook.weight).argmin(-1)
    assert torch.equal(rearrange(out.indices, "b t h w -> (b t h w)"), expected)
    codes = rearrange(out.codes, "b c t h w -> (b t h w) c")
    torch.testing.assert_close(codes, vq.codebook.weight[expected])


def test_lookup_in_float32_under_bf16_autocast():
    vq = make_vq(codebook_size=1024, dim=4)
    z = torch.randn(4, 4, 4, 16, 16)  # bf16 distances would pick a wrong code for ~5% of these
    expected = vq(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(vq(z).indices, expected)


def test_codeword_input_maps_to_itself():
    vq = make_vq(codebook_size=8, dim=3)
    indices = torch.arange(8).reshape(1, 2, 2, 2)
    codes = vq.indices_to_codes(indices)
    assert codes.shape == (1, 3, 2, 2, 2)
    assert torch.equal(vq.codes_to_indices(codes), indices)
    assert vq.codebook_size == 8


def test_gradients_straight_through_and_to_codebook():
    vq = make_vq(commitment_weight=0.25)
    z = torch.randn(2, 4, 1, 3, 3, requires_grad=True)
    out = vq(z)
    weight = torch.randn_like(z)
    (out.codes * weight).sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, weight)  # identity gradient through the lookup
    assert vq.codebook.weight.grad is None  # codes carry no gradient to the codebook

    z.grad = None
    out.losses["commitment"].backward()
    assert z.grad.abs().sum() > 0
    used = out.indices.unique()
    grad = vq.codebook.weight.grad
    assert grad[used].abs().sum() > 0
    unused = torch.ones(vq.codebook_size, dtype=torch.bool)
    unused[used] = False
    assert grad[unused].abs().sum() == 0


def test_loss_values():
    vq = make_vq(commitment_weight=0.25, codebook_weight=1.0)
    z = torch.randn(1, 4, 2, 3, 3)
    out = vq(z)
    mse = ((out.codes - z) ** 2).mean()
    torch.testing.assert_close(out.losses["commitment"], 1.25 * mse)
    for name in ("entropy", "per_token_entropy", "codebook_entropy"):
        assert out.losses[name].item() == 0.0


def test_rejects_wrong_channels():
    with pytest.raises(ValueError, match="channels"):
        make_vq(dim=4)(torch.randn(1, 3, 1, 2, 2))
