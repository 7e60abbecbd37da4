"""MagvitTokenizer: shapes, causality, image/video consistency, checkpoints, overfitting."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.lfq import entropy_weight_at
from models.tokenizer import MagvitTokenizer, TokenizerConfig

CPU = TokenizerConfig.preset("cpu")


def randomized(model: MagvitTokenizer, seed: int = 0) -> MagvitTokenizer:
    """Perturb every weight, so zero-initialised layers (adaptive norms) are exercised too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> MagvitTokenizer:
    torch.manual_seed(0)
    return randomized(MagvitTokenizer(CPU))


def video(batch: int, frames: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=gen) * 2 - 1


def test_cpu_preset_shape():
    assert (CPU.spatial_factor, CPU.temporal_factor, CPU.codebook_size) == (8, 4, 2**18)
    assert CPU.latent_shape(9, 64, 64) == (3, 8, 8)
    assert CPU.temporal_downsample == (False, True, True)  # late temporal downsampling


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
def test_forward_shapes(model, frames):
    x = video(2, frames)
    with torch.no_grad():
        recon, out = model(x)
    t = 1 + (frames - 1) // 4
    assert recon.shape == x.shape
    assert out.codes.shape == (2, CPU.bits, t, 8, 8)
    assert out.indices.shape == (2, t, 8, 8) and out.indices.dtype == torch.int64
    assert 0 <= out.indices.min() and out.indices.max() < 2**CPU.bits
    assert set(out.losses) >= {"commitment", "entropy"}


@pytest.mark.parametrize(("frames", "size"), [(4, 64), (8, 64), (9, 60), (9, 4)])
def test_rejects_bad_clip_shapes(model, frames, size):
    with pytest.raises(ValueError, match=r"T must be 1 \+ 4\*k .* multiples of 8"):
        model(video(1, frames, size))


def test_uint8_encode_decode_round_trip_shapes(model):
    clip = torch.randint(0, 256, (2, 9, 64, 64, 3), dtype=torch.uint8)
    tokens = model.encode(clip)
    assert tokens.shape == (2, 3, 8, 8) and tokens.dtype == torch.int64
    decoded = model.decode(tokens)
    assert decoded.shape == clip.shape and decoded.dtype == torch.uint8
    # encode() is forward's encoder on the same clip mapped to [-1, 1]
    x = clip.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(tokens, model.encode_to_codes(x).indices)
    with pytest.raises(ValueError, match="uint8"):
        model.encode(x)


def test_encoder_latent_frame_j_sees_only_input_frames_up_to_4j(model):
    x = video(1, 17)
    with torch.no_grad():
        z = model.encoder(x)
        tokens = model.encode_to_codes(x).indices
        for j in range(4):
            perturbed = x.clone()
            perturbed[:, :, 4 * j + 1 :] = video(1, 16 - 4 * j, seed=j + 1)
            z_p = model.encoder(perturbed)
            torch.testing.assert_close(z_p[:, :, : j + 1], z[:, :, : j + 1], rtol=0, atol=1e-5)
            assert torch.equal(
                model.encode_to_codes(perturbed).indices[:, : j + 1], tokens[:, : j + 1]
            )
            # and every later latent frame does react
            later = (z_p[:, :, j + 1 :] - z[:, :, j + 1 :]).abs().amax(dim=(0, 1, 3, 4))
            assert (later > 1e-3).all()


def test_image_tokens_equal_first_latent_frame_of_video(model):
    clip = torch.randint(0, 256, (2, 17, 64, 64, 3), dtype=torch.uint8)
    image_tokens = model.encode(clip[:, :1])
    assert image_tokens.shape == (2, 1, 8, 8)
    assert torch.equal(image_tokens, model.encode(clip)[:, :1])
    assert torch.equal(image_tokens, model.encode(clip[:, :5])[:, :1])
    # the decoded image is the first decoded frame of the video from the same first tokens
    with torch.no_grad():
        codes = model.quantizer.indices_to_codes(model.encode(clip))
        torch.testing.assert_close(
            model.decode_codes(codes[:, :, :1])[:, :, 0],
            model.decode_codes(codes)[:, :, 0],
            rtol=0,
            atol=1e-5,
        )


def test_zero_padding_variant_is_causal_too():
    model = randomized(MagvitTokenizer(TokenizerConfig(pad_mode="zeros")))
    clip = torch.randint(0, 256, (1, 9, 64, 64, 3), dtype=torch.uint8)
    tokens = model.encode(clip)
    assert torch.equal(model.encode(clip[:, :1]), tokens[:, :1])
    assert torch.equal(model.encode(clip[:, :5]), tokens[:, :2])


def test_decoder_frame_f_sees_only_latent_frames_up_to_ceil_f_over_4(model):
    gen = torch.Generator().manual_seed(1)
    codes = torch.randn(1, CPU.bits, 5, 8, 8, generator=gen).sign()
    with torch.no_grad():
        out = model.decode_codes(codes)
        assert out.shape == (1, 3, 17, 64, 64)
        for j in range(4):
            perturbed = codes.clone()
            perturbed[:, :, j + 1 :] *= -1
            out_p = model.decode_codes(perturbed)
            torch.testing.assert_close(
                out_p[:, :, : 4 * j + 1], out[:, :, : 4 * j + 1], rtol=0, atol=1e-5
            )
            later = (out_p[:, :, 4 * j + 1 :] - out[:, :, 4 * j + 1 :]).abs().amax(dim=(0, 1, 3, 4))
            assert (later > 1e-3).all()


def test_vq_variant_runs():
    cfg = TokenizerConfig(quantizer="vq", vq_codebook_size=64, vq_dim=4)
    model = MagvitTokenizer(cfg).eval()
    with torch.no_grad():
        recon, out = model(video(1, 5))
    assert recon.shape == (1, 3, 5, 64, 64) and out.codes.shape == (1, 4, 2, 8, 8)
    assert model.decode(out.indices).shape == (1, 5, 64, 64, 3)


def test_save_and_from_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["format_version"] == 1 and saved["config"]["bits"] == CPU.bits
    loaded = MagvitTokenizer.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    x = video(1, 9)
    with torch.no_grad():
        (recon, out), (recon2, out2) = model(x), loaded(x)
    assert torch.equal(recon, recon2) and torch.equal(out.indices, out2.indices)


def test_from_pretrained_errors_name_the_path(model, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        MagvitTokenizer.from_pretrained(missing)
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MagvitTokenizer.from_pretrained(tmp_path / "ckpt")

    MagvitTokenizer(TokenizerConfig(channels=8)).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").rename(tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(ValueError, match=str(tmp_path / "ckpt" / "model.safetensors")):
        MagvitTokenizer.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_res_blocks": (1, 1, 1)}, "one count >= 0 per level"),
        ({"num_res_blocks": (0, -1, 1, 1)}, "one count >= 0 per level"),
        ({"spatial_levels": 2}, "below the first temporal downsampling"),
        ({"spatial_levels": 4}, r"must be in \[0, 4\)"),
    ],
)
def test_config_rejects_bad_level_layouts(override, message):
    with pytest.raises(ValueError, match=message):
        TokenizerConfig(**{**CPU.to_dict(), **override})


def test_spatial_levels_use_per_frame_kernels_and_res_blocks_follow_the_config():
    model = MagvitTokenizer(CPU)
    assert CPU.spatial_levels == 1 and CPU.num_res_blocks[0] == 0
    assert model.encoder.conv_in.kernel_size == (1, 3, 3)
    assert model.decoder.conv_out.kernel_size == (1, 3, 3)
    convs = [m for m in model.encoder.blocks.modules() if isinstance(m, torch.nn.Conv3d)]
    # the level-0 downsampler is per frame; everything coarser mixes time
    assert convs[0].kernel_size == (1, 3, 3)
    assert all(c.kernel_size[0] in (1, CPU.temporal_kernel) for c in convs)
    assert any(c.kernel_size == (CPU.temporal_kernel, 3, 3) for c in convs)
    blocks = [len(level.blocks) for level in model.decoder.levels]
    assert blocks == list(reversed(CPU.num_res_blocks))


def test_config_json_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown TokenizerConfig keys"):
        TokenizerConfig.from_dict({**CPU.to_dict(), "colour": 1})
    assert TokenizerConfig.from_dict(json.loads(json.dumps(CPU.to_dict()))) == CPU


# the paper preset's size as built today (encoder 88,244,114 + decoder 91,591,811; LFQ has
# no parameters): a change to the preset must change this number on purpose
PAPER_PARAMETERS = 179_835_925


def test_paper_preset_shapes_on_the_meta_device():
    """The paper preset (17 x 128 x 128 -> 5 x 16 x 16 tokens, K = 2^18) built and run on the
    meta device: every layer's shapes and the parameter count, without the ~8.5 TFLOP of a
    real forward pass. (The training forward's LFQ losses need autocast, which the meta
    device lacks; they are the cpu preset's, tested above.)"""
    cfg = TokenizerConfig.preset("paper")
    assert cfg.codebook_size == 2**18 and cfg.latent_shape(17, 128, 128) == (5, 16, 16)
    with torch.device("meta"):
        model = MagvitTokenizer(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMETERS
    video = torch.empty(1, 17, 128, 128, 3, dtype=torch.uint8, device="meta")
    tokens = model.encode(video)
    assert tokens.shape == (1, 5, 16, 16) and tokens.dtype == torch.int64
    codes = model.quantizer.indices_to_codes(tokens)
    assert codes.shape == (1, 18, 5, 16, 16)
    recon = model.decode_codes(codes)
    assert recon.shape == (1, 3, 17, 128, 128) and recon.device.type == "meta"


def moving_square_clips(n: int, frames: int = 9, size: int = 32, seed: int = 0) -> torch.Tensor:
    """[n, 3, frames, size, size] in [-1, 1]: a square crossing a plain background."""
    rng = np.random.default_rng(seed)
    clips = np.empty((n, frames, size, size, 3), np.float32)
    side = size // 4
    for i in range(n):
        background = rng.uniform(-1, 1, 3)
        y, x = rng.integers(0, size - side, 2)
        vy, vx = rng.choice([-2, -1, 1, 2], 2)
        for t in range(frames):
            clips[i, t] = background
            top = int(np.clip(y + vy * t, 0, size - side))
            left = int(np.clip(x + vx * t, 0, size - side))
            clips[i, t, top : top + side, left : left + side] = -background
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()


def psnr(model: MagvitTokenizer, x: torch.Tensor) -> float:
    with torch.no_grad():
        recon, _ = model(x)
    mse = F.mse_loss(recon.clamp(-1, 1), x) / 4  # on the [0, 1] scale
    return (10 * torch.log10(1 / mse)).item()


def test_overfits_moving_squares():
    torch.manual_seed(0)
    steps = 150
    x = moving_square_clips(2)
    model = MagvitTokenizer(CPU)
    before = psnr(model, x)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(steps):
        recon, out = model(x)
        entropy_weight = entropy_weight_at(step, 0.1, decay_steps=steps // 2)
        loss = (
            F.mse_loss(recon, x) + out.losses["commitment"] + entropy_weight * out.losses["entropy"]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = psnr(model, x)
    print(f"\noverfit PSNR: {before:.2f} dB at init -> {after:.2f} dB after {steps} steps")
    assert after >= before + 8
