"""Trivial predictors of clips and tokens (the scale for reconstruction PSNR and masked-token
accuracy) and the pictures of reconstructions and samples."""

import numpy as np
import pytest
import torch

from magvit.evaluation.baselines import (
    baseline_psnrs,
    block_means,
    causal_frame_starts,
    clip_mean_colour,
    colour_saturation,
    copy_last_condition_frame,
    copy_neighbour_tokens,
    frame_mean_colour,
    token_footprint_mean,
)
from magvit.evaluation.pictures import (
    LABEL_WIDTH,
    PAD_GREY,
    SEPARATOR,
    reconstruction_grid,
    sample_grid,
)


def grey_clip(frames: np.ndarray) -> np.ndarray:
    """uint8 [1, T, H, W, 3] with the same value in every channel, from [T, H, W] values."""
    return np.repeat(np.asarray(frames, dtype=np.uint8)[None, ..., None], 3, axis=-1)


def test_block_means_equal_hand_computed_means():
    frame = np.array(
        [
            [0, 2, 10, 20],
            [4, 6, 30, 40],
            [1, 1, 100, 100],
            [1, 5, 100, 104],
        ]
    )
    out = block_means(grey_clip([frame]), 2)
    expected = np.array(
        [
            [3, 3, 25, 25],
            [3, 3, 25, 25],
            [2, 2, 101, 101],
            [2, 2, 101, 101],
        ]
    )
    assert out.dtype == np.uint8 and out.shape == (1, 1, 4, 4, 3)
    np.testing.assert_array_equal(out[0, 0, ..., 1], expected)


def test_block_means_average_ragged_edge_blocks_on_their_own():
    frame = np.array([[0, 10, 20, 90], [0, 10, 20, 90], [30, 30, 30, 60], [30, 30, 30, 60]])
    out = block_means(grey_clip([frame]), 3)[0, 0, ..., 0]
    # blocks: rows 0-2 x cols 0-2, rows 0-2 x col 3, row 3 x cols 0-2, row 3 x col 3
    assert (out[:3, :3] == 17).all()  # (0 + 10 + 20) * 2 + 30 * 3 = 150, / 9 = 16.7
    np.testing.assert_array_equal(out[:3, 3], [80, 80, 80])  # (90 + 90 + 60) / 3
    np.testing.assert_array_equal(out[3, :3], [30, 30, 30])
    assert out[3, 3] == 60


def test_block_means_of_each_frame_stay_in_that_frame():
    out = block_means(grey_clip([np.zeros((4, 4)), np.full((4, 4), 200)]), 4)
    assert (out[0, 0] == 0).all() and (out[0, 1] == 200).all()


def test_token_footprint_mean_groups_frames_causally():
    colours = np.array([10, 20, 40, 100, 200])  # a distinct constant colour per frame
    clip = grey_clip(np.broadcast_to(colours[:, None, None], (5, 4, 4)))
    out = token_footprint_mean(clip, spatial_factor=2, temporal_factor=2)
    per_frame = out[0, :, 0, 0, 0]
    # latent frame 0 = pixel frame 0 alone; then pixel frames 1-2 and 3-4
    np.testing.assert_array_equal(per_frame, [10, 30, 30, 150, 150])
    assert (out == out[:, :, :1, :1]).all()  # constant frames stay constant
    np.testing.assert_array_equal(causal_frame_starts(9, 4), [0, 1, 5])
    np.testing.assert_array_equal(causal_frame_starts(1, 4), [0])


def test_token_footprint_mean_averages_space_in_blocks_of_the_spatial_factor():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 4, 4)).astype(np.uint8)
    clip = grey_clip(frames)
    out = token_footprint_mean(clip, spatial_factor=2, temporal_factor=2)
    footprint = frames[1:3, 2:4, 0:2].astype(float).mean()  # latent frame 1, token (1, 0)
    assert out[0, 1, 2, 0, 0] == out[0, 2, 3, 1, 2] == np.rint(footprint)


def test_token_footprint_mean_of_an_image_is_its_block_means():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 1, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(token_footprint_mean(images, 4, 4), block_means(images, 4))


def test_mean_colours_of_clips_and_frames():
    clip = np.zeros((1, 2, 2, 2, 3), dtype=np.uint8)
    clip[0, 0] = (100, 0, 50)
    clip[0, 1, 0] = (200, 40, 0)  # frame 1: half (200, 40, 0), half black
    np.testing.assert_array_equal(frame_mean_colour(clip)[0, 0, 1, 1], (100, 0, 50))
    np.testing.assert_array_equal(frame_mean_colour(clip)[0, 1, 1, 1], (100, 20, 0))
    np.testing.assert_array_equal(clip_mean_colour(clip)[0, 1, 0, 0], (100, 10, 25))
    assert clip_mean_colour(clip).shape == clip.shape


def test_a_constant_clip_is_predicted_exactly():
    clip = np.full((2, 5, 8, 8, 3), (12, 200, 77), dtype=np.uint8)
    psnrs = baseline_psnrs(clip, spatial_factor=4, temporal_factor=2)
    assert set(psnrs) == {
        "clip_mean_colour",
        "frame_mean_colour",
        "token_footprint_mean",
        "block_mean_8x8",
        "block_mean_4x4",
    }
    assert all(v == float("inf") for v in psnrs.values())


def test_finer_predictors_score_higher_on_a_smooth_clip():
    y, x = np.mgrid[0:16, 0:16]
    frames = [x * 6 + y * 3 + 20 * t for t in range(5)]  # 0..215
    clip = grey_clip(np.stack(frames))
    psnrs = baseline_psnrs(clip, spatial_factor=8, temporal_factor=2)
    assert psnrs["clip_mean_colour"] < psnrs["frame_mean_colour"] < psnrs["block_mean_8x8"]
    assert psnrs["token_footprint_mean"] < psnrs["block_mean_8x8"] < psnrs["block_mean_4x4"]


def test_colour_saturation_is_the_mean_channel_spread():
    pixels = np.array([[10, 200, 50], [7, 7, 7]], dtype=np.uint8).reshape(1, 1, 1, 2, 3)
    assert colour_saturation(pixels) == pytest.approx((190 + 0) / 2)
    assert colour_saturation(np.full((1, 2, 4, 4, 3), 255, dtype=np.uint8)) == 0


def test_reconstruction_grid_puts_originals_above_reconstructions():
    def constant(frames, value):
        return np.full((frames, 4, 4, 3), value, dtype=np.uint8)

    pairs = [(constant(3, 10), constant(3, 20)), (constant(1, 30), constant(1, 40))]
    grid = reconstruction_grid(pairs, separator=2)
    assert grid.shape == (4 + 4 + 2 + 4 + 4, 3 * 4, 3) and grid.dtype == np.uint8
    assert (grid[0:4] == 10).all() and (grid[4:8] == 20).all()
    assert (grid[8:10] == SEPARATOR).all()
    assert (grid[10:14, :4] == 30).all() and (grid[14:18, :4] == 40).all()
    assert (grid[10:18, 4:] == PAD_GREY).all()  # the image is one frame wide
    frames = np.arange(3, dtype=np.uint8)[:, None, None, None] * 50 + constant(3, 0)
    row = reconstruction_grid([(frames, frames)], separator=2)[0]
    np.testing.assert_array_equal(row[[0, 4, 8], 0], [0, 50, 100])  # frames left to right
    with pytest.raises(ValueError):
        reconstruction_grid([])


def test_copy_neighbour_takes_the_nearest_visible_frame_earlier_first():
    grid = (3, 1, 2)  # t, h, w
    tokens = torch.tensor([[10, 11, 20, 21, 30, 31]])  # frame t holds 10t, 10t + 1
    mask = torch.tensor([[False, True, True, True, False, False]])
    guess = copy_neighbour_tokens(tokens, mask, grid)
    # (t1, w0): frames 0 and 2 both one away -> the earlier, 10; (t0, w1): t1 hidden -> t2's 31;
    # (t1, w1): t0 hidden, t2 visible -> 31; visible positions keep their tokens
    assert guess.tolist() == [[10, 31, 10, 31, 30, 31]]
    everything = torch.ones_like(mask)
    assert (copy_neighbour_tokens(tokens, everything, grid) == -1).all()  # nothing to copy


def test_copy_last_condition_frame_repeats_it_forward():
    tokens = torch.arange(12).reshape(1, 12)  # grid (3, 2, 2)
    copied = copy_last_condition_frame(tokens, 2, (3, 2, 2))
    assert copied.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]]
    assert copy_last_condition_frame(tokens, 1, (3, 2, 2)).tolist() == [[0, 1, 2, 3] * 3]


def test_sample_grid_is_a_labelled_row_per_class():
    samples = np.zeros((2, 3, 9, 16, 16, 3), dtype=np.uint8)  # 2 classes x 3 samples, 9 frames
    samples[1] = 200
    samples[:, :, 4] = 90  # the middle frame of every sample
    grid = sample_grid(samples, ["first", "second"])
    assert grid.shape == (2 * 16, LABEL_WIDTH + 3 * (3 * 16 + 2), 3)
    left = LABEL_WIDTH
    assert (grid[:16, left : left + 16] == 0).all() and (grid[16:, left : left + 16] == 200).all()
    assert (grid[:, left + 16 : left + 32] == 90).all()  # frames 0, 4, 8 left to right
    assert (grid[:, left + 48 : left + 50] == SEPARATOR).all()  # between samples
    for row in (grid[:16, :left], grid[16:, :left]):
        assert (row < 100).any() and (row == 255).any()  # dark text on white
    with pytest.raises(ValueError, match="2 classes"):
        sample_grid(samples, ["only one"])
