"""Compression evaluation: token bpp, the lossless token coder, MS-SSIM and the PyAV codecs."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from magvit.evaluation import compression
from magvit.evaluation.compression import (
    codec_at_bpp,
    decode_tokens,
    empirical_entropy_bits,
    encode_tokens,
    encode_with_codec,
    rate_distortion_curve,
    rate_point,
    token_bits_per_pixel,
)
from magvit.media.fixed_heap_fill import MALLOPT, fixed_heap_fill
from models.recon_metrics import MS_SSIM_BETAS, ms_ssim, ms_ssim_scales, psnr

CODECS = ["h264", "hevc"]


def moving_clip(frames: int = 9, height: int = 64, width: int = 64) -> np.ndarray:
    """A diagonal colour gradient sliding right and a red disc moving down-right."""
    rows, cols = np.mgrid[0:height, 0:width]
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        clip[t, ..., 0] = (cols * 3 + t * 6) % 256
        clip[t, ..., 1] = (rows * 3) % 256
        clip[t, ..., 2] = 90
        disc = (rows - height // 4 - 2 * t) ** 2 + (cols - width // 3 - 2 * t) ** 2 < (
            height // 6
        ) ** 2
        clip[t][disc] = (250, 40, 40)
    return clip


def noisy(clip: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, clip.shape)
    return np.clip(clip + noise, 0, 255).astype(np.uint8)


# --- token stream ---------------------------------------------------------------------------


def test_token_bits_per_pixel_counts_pixels_not_channels():
    # a 9 x 64 x 64 clip as a 3 x 8 x 8 grid of 10-bit tokens
    assert token_bits_per_pixel(192, 10, 9 * 64 * 64) == pytest.approx(1920 / 36864)
    assert token_bits_per_pixel(3 * 4 * 4, 18, 9 * 32 * 32) == pytest.approx(864 / 9216)
    with pytest.raises(ValueError):
        token_bits_per_pixel(192, 10, 0)


@pytest.mark.parametrize(
    ("bits", "shape"), [(1, (5,)), (10, (3, 8, 8)), (13, (7,)), (18, (3, 4, 4)), (32, (2, 3))]
)
def test_token_coder_round_trips_exactly(bits, shape):
    rng = np.random.default_rng(bits)
    tokens = rng.integers(0, 2**bits, shape, dtype=np.int64)
    tokens.flat[0], tokens.flat[-1] = 0, 2**bits - 1  # both ends of the range
    decoded = decode_tokens(encode_tokens(tokens, bits), bits, tokens.size)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, tokens.ravel())


def test_skewed_tokens_code_below_raw_and_uniform_ones_at_about_raw():
    rng = np.random.default_rng(0)
    count, bits = 1536, 18
    skewed = np.minimum(rng.geometric(0.05, count) - 1, 2**bits - 1)
    uniform = rng.integers(0, 2**bits, count)
    raw = count * bits
    skewed_bits = 8 * len(encode_tokens(skewed, bits))
    uniform_bits = 8 * len(encode_tokens(uniform, bits))
    assert skewed_bits < 0.45 * raw
    assert raw <= uniform_bits < 1.01 * raw
    np.testing.assert_array_equal(decode_tokens(encode_tokens(skewed, bits), bits, count), skewed)


def test_token_coder_rejects_tokens_outside_the_bit_width():
    with pytest.raises(ValueError, match="2\\^10"):
        encode_tokens(np.array([0, 1024]), 10)
    with pytest.raises(ValueError):
        encode_tokens(np.array([-1, 3]), 10)
    with pytest.raises(ValueError):
        encode_tokens(np.array([0.5]), 10)
    with pytest.raises(ValueError):
        encode_tokens(np.array([1]), 0)


def test_empirical_entropy_bits_is_zeroth_order_entropy_times_count():
    assert empirical_entropy_bits(np.full(50, 7)) == 0.0
    assert empirical_entropy_bits(np.array([0, 1, 2, 3] * 25)) == pytest.approx(200.0)
    # p = (3/4, 1/4): H = 0.8113 bits per token
    expected = 8 * -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    assert empirical_entropy_bits(np.array([[5, 5, 5, 9], [5, 5, 5, 9]])) == pytest.approx(expected)


# --- MS-SSIM --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "scales"),
    [(11, 11, 1), (12, 12, 2), (32, 32, 2), (43, 64, 2), (48, 64, 3), (64, 64, 3)]
    + [(98, 200, 3), (99, 99, 4), (175, 175, 4), (176, 176, 5), (256, 320, 5)],
)
def test_ms_ssim_scales_follow_the_frame_size(height, width, scales):
    assert ms_ssim_scales(height, width) == scales


def test_ms_ssim_refuses_frames_smaller_than_one_window():
    with pytest.raises(ValueError, match="at least 11"):
        ms_ssim_scales(10, 64)
    clip = moving_clip(2, 10, 64)
    with pytest.raises(ValueError):
        ms_ssim(clip, clip)


def test_ms_ssim_is_one_for_identical_frames_and_falls_as_noise_grows():
    clip = moving_clip()
    assert ms_ssim(clip, clip) == pytest.approx(1.0, abs=1e-5)  # float32
    scores = [ms_ssim(clip, noisy(clip, sigma)) for sigma in (3, 15, 45)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def nchw(video: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(video).permute(0, 3, 1, 2).to(dtype)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 64), (64, 64)])
def test_ms_ssim_agrees_with_torchmetrics_in_double_precision(height, width):
    reference = moving_clip(2, height, width)
    test = noisy(reference, 20)
    expected = multiscale_structural_similarity_index_measure(
        nchw(test, torch.float64),
        nchw(reference, torch.float64),
        data_range=255.0,
        betas=MS_SSIM_BETAS[: ms_ssim_scales(height, width)],
    )
    assert ms_ssim(reference, test) == pytest.approx(float(expected), abs=1e-5)


def test_ms_ssim_of_large_frames_is_the_standard_five_scale_metric():
    reference = moving_clip(1, 176, 192)
    test = noisy(reference, 20)
    standard = multiscale_structural_similarity_index_measure(
        nchw(test, torch.float32), nchw(reference, torch.float32), data_range=255.0
    )
    assert ms_ssim(reference, test) == pytest.approx(float(standard), abs=1e-6)


def test_ms_ssim_refuses_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        ms_ssim(moving_clip(2), moving_clip(3))


# --- codecs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip64():
    return moving_clip()


@pytest.mark.parametrize("codec", CODECS)
def test_lower_crf_costs_more_bits_and_gives_higher_psnr(codec, clip64):
    points = rate_distortion_curve([clip64], codec, [20, 32, 44])
    assert [point.crf for point in points] == [20, 32, 44]
    assert {point.codec for point in points} == {codec}
    bpps, psnrs = [point.bpp for point in points], [point.psnr for point in points]
    assert bpps[0] > bpps[1] > bpps[2] > 0
    assert psnrs[0] > psnrs[1] > psnrs[2]
    assert all(0 < point.ms_ssim < 1 for point in points)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape", [(9, 32, 32), (9, 48, 64), (5, 64, 64)])
def test_decoded_clip_has_every_frame_in_order(codec, shape):
    clip = moving_clip(*shape)
    result = encode_with_codec(clip, codec, 20)
    assert result.decoded.shape == clip.shape
    assert result.decoded.dtype == np.uint8
    errors = ((result.decoded[:, None].astype(float) - clip[None].astype(float)) ** 2).mean(
        axis=(2, 3, 4)
    )
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(shape[0]))
    assert result.bpp == pytest.approx(result.bits / (shape[0] * shape[1] * shape[2]))
    assert result.psnr == pytest.approx(psnr(clip, result.decoded))
    assert result.psnr > 28
    assert result.ms_ssim == pytest.approx(ms_ssim(clip, result.decoded))


@pytest.mark.parametrize("codec", CODECS)
def test_encoder_metadata_is_not_counted(codec):
    # x264's and x265's version/options SEI alone is 700-2500 bytes; the pictures of a
    # static grey clip cost far less
    flat = np.full((9, 64, 64, 3), 128, dtype=np.uint8)
    result = encode_with_codec(flat, codec, 30)
    assert result.bits < 8 * 400
    assert result.psnr == float("inf")


def test_encoding_is_repeatable_whatever_the_heap_holds():
    clip = moving_clip(9, 32, 32)
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(6):
        junk = [
            rng.integers(0, 256, int(size), dtype=np.uint8) for size in rng.integers(16, 2e5, 30)
        ]
        del junk[::2]
        runs.append(compression._bitstream(clip, "hevc", 28, compression.FPS))
    assert all(run == runs[0] for run in runs)


@pytest.mark.skipif(MALLOPT is None, reason="needs glibc's mallopt")
def test_fixed_heap_fill_zeroes_reused_heap_blocks():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 * 1024  # above glibc's small-block cache, below its mmap threshold
    block = libc.malloc(size)
    ctypes.memset(block, 0x77, size)
    libc.free(block)
    with fixed_heap_fill():
        block = libc.malloc(size)
        contents = ctypes.string_at(block, size)
        libc.free(block)
    assert contents == bytes(size)


@pytest.mark.parametrize("codec", CODECS)
def test_codec_at_bpp_is_closer_to_the_target_than_the_neighbouring_crfs(codec, clip64):
    clips = [clip64, moving_clip(9, 32, 32)]
    target = 0.2
    chosen = codec_at_bpp(clips, codec, target)
    assert 0 < chosen.crf < 51
    assert chosen == rate_point(clips, codec, chosen.crf)
    for neighbour in (chosen.crf - 1, chosen.crf + 1):
        other = rate_point(clips, codec, neighbour)
        assert abs(chosen.bpp - target) <= abs(other.bpp - target)
    assert abs(chosen.bpp - target) < 0.05 * target


def test_codec_at_bpp_clamps_to_the_crf_range():
    clips = [moving_clip(9, 32, 32)]
    assert codec_at_bpp(clips, "h264", 0.0).crf == 51
    assert codec_at_bpp(clips, "h264", 100.0).crf == 0


def test_codecs_refuse_bad_input(clip64):
    with pytest.raises(ValueError, match="unknown codec"):
        encode_with_codec(clip64, "vp9", 30)
    with pytest.raises(ValueError, match="CRF"):
        encode_with_codec(clip64, "h264", 52)
    with pytest.raises(ValueError, match="even"):
        encode_with_codec(moving_clip(9, 33, 32), "h264", 30)
    with pytest.raises(ValueError, match="uint8"):
        encode_with_codec(clip64.astype(np.float32), "h264", 30)
