import itertools
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from magvit.training.ray_harness import endless_batches, run_key
from models.ema import EMA
from models.lr_schedule import warmup_cosine_lr
from models.recon_metrics import codebook_usage, psnr, ssim


def test_ema_trails_the_model_and_copies_buffers():
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.shadow.weight, torch.full((2,), 0.9 * 1.0 + 0.1 * 2.0))
    assert torch.equal(ema.shadow.running_mean, model.running_mean)
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_warmup_then_cosine_to_the_floor():
    lrs = [
        warmup_cosine_lr(s, 1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
        for s in range(111)
    ]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_psnr_ssim_agree_with_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    noise = rng.normal(0, 10, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0)
    worse = np.clip(a + 4 * noise, 0, 255).astype(np.uint8)
    assert ssim(a, worse) < ssim(a, b) < 1.0


def test_codebook_usage_counts_codes_and_perplexity():
    tokens = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    used, perplexity = codebook_usage(tokens, codebook_size=8)
    assert used == 0.5 and perplexity == pytest.approx(4.0)
    assert codebook_usage(torch.zeros(10, dtype=torch.long), 4) == (0.25, pytest.approx(1.0))
    # fewer tokens than codes: each distinct token counts against the token count
    assert codebook_usage(torch.tensor([5, 6, 7, 7]), codebook_size=1024)[0] == 0.75


def test_run_key_changes_with_what_defines_the_run():
    a = run_key("tokenizer", {"steps": 10}, "data-a")
    assert a == run_key("tokenizer", {"steps": 10}, "data-a")
    assert a != run_key("tokenizer", {"steps": 11}, "data-a")
    assert a != run_key("tokenizer", {"steps": 10}, "data-b")
    assert a.startswith("tokenizer-")


def test_batches_cover_every_row_once_an_epoch_in_an_order_of_seed_and_step():
    def first(count, batch, seed, n, **kwargs):
        return [
            b.tolist() for b in itertools.islice(endless_batches(count, batch, seed, **kwargs), n)
        ]

    epochs = first(10, 4, seed=3, n=4, drop_last=False)  # 4 + 4 + 2 rows, then a new order
    assert [len(b) for b in epochs] == [4, 4, 2, 4]
    assert sorted(sum(epochs[:3], [])) == list(range(10))
    full = first(10, 4, seed=3, n=6)  # drop_last: two full batches an epoch, reshuffled
    assert [len(b) for b in full] == [4] * 6 and full[:2] != full[2:4]
    assert all(len(set(sum(full[i : i + 2], []))) == 8 for i in (0, 2, 4))
    # a run resumed at step 5 draws what the uninterrupted run drew from step 5 on
    assert first(10, 4, seed=3, n=1, skip=5) == full[5:6]
    assert first(10, 4, seed=3, n=6) == full and first(10, 4, seed=4, n=6) != full
    with pytest.raises(ValueError, match="holds 3 rows, fewer than batch_size=4"):
        endless_batches(3, 4, seed=0)
    assert sorted(first(3, 4, seed=0, n=1, drop_last=False)[0]) == [0, 1, 2]  # one short batch
    with pytest.raises(ValueError, match="holds 0 rows"):
        endless_batches(0, 4, seed=0, drop_last=False)


def test_clip_shape_must_fit_the_tokenizer():
    from magvit.params import ParamsError, check_clip_shape, parse_params

    params = parse_params({"decode": {"resize_short_side": 72, "crop_size": 60}})
    with pytest.raises(ParamsError, match="decode.num_frames / decode.crop_size"):
        check_clip_shape(params, params.tokenizer.config())
    good = parse_params({})
    check_clip_shape(good, good.tokenizer.config())


def test_tokenizer_overrides_are_validated():
    from magvit.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match="tokenizer: overrides"):
        parse_params({"tokenizer": {"overrides": {"bitz": 12}}})
    assert parse_params({"tokenizer": {"overrides": {"bits": 12}}}).tokenizer.config().bits == 12


def test_augment_flips_and_reorders_colours_per_clip_and_nothing_else():
    from magvit.training.clip_batches import augment

    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (64, 3, 4, 5, 3), dtype=np.uint8)
    out = augment(clips, np.random.default_rng(1))
    assert out.shape == clips.shape and out.dtype == np.uint8
    seen = set()
    for clip, new in zip(clips, out, strict=True):
        matches = [
            (flip, order)
            for flip in (False, True)
            for order in itertools.permutations(range(3))
            if np.array_equal((clip[:, :, ::-1] if flip else clip)[..., list(order)], new)
        ]
        assert len(matches) == 1, "each clip is one flip / channel order of itself"
        seen.add(matches[0])
    assert len(seen) >= 6, "the flips and orders vary from clip to clip"
    assert np.array_equal(out, augment(clips, np.random.default_rng(1))), "seeded"

    kept = augment(clips, np.random.default_rng(1), colour_orders=False)
    flipped = [not np.array_equal(c, k) for c, k in zip(clips, kept, strict=True)]
    assert 0 < sum(flipped) < len(clips), "flips still vary"
    for clip, new, flip in zip(clips, kept, flipped, strict=True):
        assert np.array_equal(clip[:, :, ::-1] if flip else clip, new), "colours as they were"


def test_zoom_magnifies_one_crop_the_same_in_every_frame():
    from magvit.training.clip_batches import zoom

    ramp = np.stack([np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))] * 3, -1)
    clip = np.stack([ramp, 255 - ramp])  # [2, 64, 64, 3]: +4 per column, then its negative
    out = zoom(clip, 2.0, np.random.default_rng(0))
    assert out.shape == clip.shape and out.dtype == np.uint8
    steps = np.diff(out[0, 10, 4:-4, 0].astype(int))
    assert np.all(np.abs(steps - 2) <= 1), "magnified 2x: +2 per column"
    assert np.abs(out[1].astype(int) - (255 - out[0].astype(int))).max() <= 1, "one crop"
