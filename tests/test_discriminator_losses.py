import math

import pytest
import torch
from safetensors.torch import save_file

from models.discriminator import BlurPool3d, Discriminator3d, DiscriminatorConfig
from models.losses import (
    LeCamEMA,
    PerceptualLoss,
    build_perceptual_loss,
    hinge_discriminator_loss,
    non_saturating_generator_loss,
    reconstruction_loss,
)


def checkerboard(t: int, h: int, w: int) -> torch.Tensor:
    it, ih, iw = torch.arange(t), torch.arange(h), torch.arange(w)
    parity = (it[:, None, None] + ih[None, :, None] + iw[None, None, :]) % 2
    return (parity * 2 - 1).float()[None, None]  # [1, 1, T, H, W]


@pytest.mark.parametrize(
    "shape, downsample_time, expected",
    [
        ((2, 4, 8, 16, 16), True, (2, 4, 4, 8, 8)),
        ((2, 4, 17, 15, 9), True, (2, 4, 9, 8, 5)),
        ((2, 4, 8, 16, 16), False, (2, 4, 8, 8, 8)),
        ((1, 3, 1, 8, 8), True, (1, 3, 1, 4, 4)),  # a single frame keeps T = 1
    ],
)
def test_blurpool_shapes(shape, downsample_time, expected):
    assert BlurPool3d(shape[1], downsample_time)(torch.randn(shape)).shape == expected


def test_blurpool_removes_checkerboard_keeps_constant():
    pool = BlurPool3d(1)
    board = checkerboard(8, 16, 16)
    assert pool(board).abs().max() < 1e-6  # Nyquist pattern is blurred away
    # naive strided subsampling would keep it at full amplitude
    assert board[..., ::2, ::2, ::2].abs().min() == 1.0
    constant = torch.full((1, 1, 8, 16, 16), 0.7)
    torch.testing.assert_close(pool(constant), torch.full((1, 1, 4, 8, 8), 0.7))

    spatial_only = BlurPool3d(1, downsample_time=False)
    assert spatial_only(checkerboard(4, 16, 16)).abs().max() < 1e-6


def test_blurpool_is_depthwise():
    pool = BlurPool3d(2)
    x = torch.zeros(1, 2, 4, 8, 8)
    x[:, 0] = torch.randn(4, 8, 8)
    out = pool(x)
    assert out[:, 0].abs().sum() > 0
    assert out[:, 1].abs().sum() == 0


@pytest.mark.parametrize("frames, out_frames", [(1, 1), (5, 1), (9, 2), (17, 3)])
def test_discriminator_shapes(frames, out_frames):
    torch.manual_seed(0)
    disc = Discriminator3d(DiscriminatorConfig(channels=8, channel_multipliers=(1, 2, 2)))
    video = torch.rand(2, 3, frames, 16, 16) * 2 - 1
    logits = disc(video)
    assert logits.shape == (2, out_frames, 2, 2)
    assert torch.isfinite(logits).all()
    logits.mean().backward()
    assert all(p.grad is not None for p in disc.parameters())


def test_hinge_discriminator_loss_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # real: relu(1 - r) = [0, 0.5, 2]; fake: relu(1 + f) = [0, 1, 2]
    expected = (0 + 0.5 + 2) / 3 + (0 + 1 + 2) / 3
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(expected)
    assert hinge_discriminator_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0


def test_non_saturating_generator_loss_values():
    fake = torch.tensor([-2.0, 0.0, 1.0])
    expected = (math.log1p(math.exp(2.0)) + math.log(2.0) + math.log1p(math.exp(-1.0))) / 3
    assert non_saturating_generator_loss(fake).item() == pytest.approx(expected, rel=1e-6)


def test_lecam_ema_update_and_penalty():
    lecam = LeCamEMA(decay=0.9)
    lecam.update(torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0]))  # first: copy means
    assert lecam.ema_real.item() == pytest.approx(2.0)
    assert lecam.ema_fake.item() == pytest.approx(-1.0)
    lecam.update(torch.tensor([4.0]), torch.tensor([1.0]))
    assert lecam.ema_real.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    assert lecam.ema_fake.item() == pytest.approx(0.9 * -1.0 + 0.1 * 1.0)

    ema_real, ema_fake = lecam.ema_real.item(), lecam.ema_fake.item()  # 2.2, -0.8
    real = torch.tensor([0.0, -1.0, 3.0])
    fake = torch.tensor([1.0, 3.0])
    expected_real = sum(max(r - ema_fake, 0) ** 2 for r in real.tolist()) / 3
    expected_fake = sum(max(ema_real - f, 0) ** 2 for f in fake.tolist()) / 2
    assert lecam.penalty(real, fake).item() == pytest.approx(expected_real + expected_fake)

    state = lecam.state_dict()
    assert {"ema_real", "ema_fake", "num_updates"} <= state.keys()
    restored = LeCamEMA(decay=0.9)
    restored.load_state_dict(state)
    assert restored.ema_real.item() == pytest.approx(ema_real)
    assert LeCamEMA().decay == 0.999


def test_lecam_penalty_gradient_reaches_logits_only():
    lecam = LeCamEMA()
    lecam.update(torch.tensor([1.0]), torch.tensor([-1.0]))
    real = torch.tensor([2.0], requires_grad=True)
    fake = torch.tensor([-3.0], requires_grad=True)
    lecam.penalty(real, fake).backward()
    assert real.grad.item() == pytest.approx(2 * (2.0 - -1.0))
    assert fake.grad.item() == pytest.approx(-2 * (1.0 - -3.0))


def test_reconstruction_loss():
    recon, target = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
    assert reconstruction_loss(recon, target).item() == pytest.approx((1 + 4) / 2)
    assert reconstruction_loss(recon, target, "l1").item() == pytest.approx((1 + 2) / 2)
    with pytest.raises(ValueError, match="l1"):
        reconstruction_loss(recon, target, "huber")


def test_perceptual_vgg_layout_matches_torchvision():
    state = PerceptualLoss().state_dict()
    convs = [k for k in state if k.startswith("features.") and k.endswith(".weight")]
    conv_indices = [int(k.split(".")[1]) for k in convs]
    assert conv_indices == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert state["features.28.weight"].shape == (512, 512, 3, 3)
    assert [tuple(state[f"lins.{k}.weight"].shape) for k in range(5)] == [
        (1, 64, 1, 1),
        (1, 128, 1, 1),
        (1, 256, 1, 1),
        (1, 512, 1, 1),
        (1, 512, 1, 1),
    ]


def test_build_perceptual_loss_none_and_missing(tmp_path):
    assert build_perceptual_loss(None) is None
    missing = tmp_path / "lpips_vgg16.safetensors"
    with pytest.raises(FileNotFoundError, match="lpips_vgg16.safetensors") as info:
        build_perceptual_loss(str(missing))
    assert "safetensors" in str(info.value) and "features" in str(info.value)


def test_build_perceptual_loss_loads_and_scores(tmp_path):
    torch.manual_seed(0)
    source = PerceptualLoss()
    with torch.no_grad():
        for lin in source.lins:
            lin.weight.abs_()  # LPIPS layer weights are non-negative
    path = tmp_path / "lpips.safetensors"
    save_file(source.state_dict(), str(path))

    loss = build_perceptual_loss(str(path))
    assert isinstance(loss, PerceptualLoss)
    assert not loss.training and all(not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training
    torch.testing.assert_close(loss.lins[2].weight, source.lins[2].weight)

    video = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    assert loss(video, video.clone()).item() == pytest.approx(0.0, abs=1e-7)
    other = (video + 0.3 * torch.randn_like(video)).clamp(-1, 1).requires_grad_(True)
    distance = loss(other, video)
    assert distance.item() > 0
    distance.backward()
    assert other.grad.abs().sum() > 0
    # a video is scored frame by frame: same as the mean over its frames as images
    per_frame = [loss(other[:, :, t].detach(), video[:, :, t]) for t in range(2)]
    torch.testing.assert_close(distance.detach(), torch.stack(per_frame).mean())


def test_build_perceptual_loss_rejects_wrong_file(tmp_path):
    state = {k: v.clone() for k, v in PerceptualLoss().state_dict().items()}
    state["lins.0.weight"] = torch.zeros(1, 32, 1, 1)
    del state["features.28.bias"]
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"features\.28\.bias") as info:
        build_perceptual_loss(str(path))
    assert "lins.0.weight" in str(info.value)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        build_perceptual_loss(str(garbage))
