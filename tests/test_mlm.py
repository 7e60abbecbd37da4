import math

import pytest
import torch

from magvit.evaluation.baselines import copy_last_condition_frame, copy_neighbour_tokens
from magvit.training.mlm_loop import masked_token_metrics
from models.mlm import (
    MASK_ID,
    MaskedTokenTransformer,
    MLMConfig,
    cosine_mask_schedule,
    drop_labels,
    mask_tokens,
    masked_token_accuracy,
    masked_token_loss,
    num_masked,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and much faster on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = MLMConfig(bits=6, num_factors=2, grid=(3, 4, 4), num_classes=4, dim=32, depth=2, heads=4)


def expected_count(r: float, maskable: int) -> int:
    """The training schedule written out: ceil(cos(pi/2 r) * maskable) within [1, maskable]."""
    return min(max(math.ceil(math.cos(math.pi / 2 * r) * maskable), 1), maskable)


def test_cosine_mask_schedule_end_points():
    assert cosine_mask_schedule(0.0).item() == 1.0
    assert cosine_mask_schedule(1.0).item() == pytest.approx(0.0, abs=1e-12)
    assert cosine_mask_schedule(0.5).item() == pytest.approx(math.sqrt(0.5))


def test_mask_tokens_masks_exactly_the_scheduled_count():
    tokens = torch.randint(0, 64, (9, 48))
    ratios = torch.tensor([0.0, 0.05, 0.2, 1 / 3, 0.5, 0.7, 0.9, 0.999, 1.0])
    inputs, mask = mask_tokens(tokens, torch.Generator().manual_seed(0), ratios=ratios)
    counts = mask.sum(-1).tolist()
    assert counts == [expected_count(r, 48) for r in ratios.tolist()]
    assert counts[0] == 48 and counts[-1] == 1
    assert (inputs[mask] == MASK_ID).all()
    assert torch.equal(inputs[~mask], tokens[~mask])
    assert num_masked(ratios, 48).tolist() == counts


def test_mask_tokens_random_ratios_follow_the_cosine_schedule():
    maskable, batch = 40, 4000
    tokens = torch.zeros(batch, maskable, dtype=torch.long)
    _, mask = mask_tokens(tokens, torch.Generator().manual_seed(0))
    counts = mask.sum(-1)
    assert counts.min() >= 1 and counts.max() <= maskable
    # E[count] for r ~ U(0, 1), by a fine Riemann sum of the schedule (about 0.647 * maskable)
    grid = [(i + 0.5) / 100_000 for i in range(100_000)]
    expected_mean = sum(expected_count(r, maskable) for r in grid) / len(grid)
    assert counts.float().mean().item() == pytest.approx(expected_mean, abs=0.6)


def test_mask_tokens_positions_are_uniform_and_condition_is_never_masked():
    batch, length, cond = 6000, 56, 16
    tokens = torch.randint(0, 64, (batch, length))
    ratio = 0.6  # -> ceil(cos(0.3 pi) * 40) = 24 of the 40 maskable positions
    inputs, mask = mask_tokens(
        tokens, torch.Generator().manual_seed(1), cond, ratios=torch.full((batch,), ratio)
    )
    assert not mask[:, :cond].any()
    assert torch.equal(inputs[:, :cond], tokens[:, :cond])
    assert (mask.sum(-1) == expected_count(ratio, length - cond)).all()
    frequency = mask[:, cond:].float().mean(0)  # each maskable position: 24 / 40 = 0.6
    assert torch.allclose(frequency, torch.full_like(frequency, 0.6), atol=0.025)

    _, mask = mask_tokens(tokens[:50], torch.Generator().manual_seed(2), cond)  # random ratios
    assert not mask[:, :cond].any() and (mask.sum(-1) >= 1).all()


def test_mask_tokens_is_deterministic_under_a_generator():
    tokens = torch.randint(0, 64, (4, 48))
    a = mask_tokens(tokens, torch.Generator().manual_seed(3))
    b = mask_tokens(tokens, torch.Generator().manual_seed(3))
    c = mask_tokens(tokens, torch.Generator().manual_seed(4))
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_drop_labels_rate_and_id():
    labels = torch.randint(0, 8, (50_000,))
    dropped = drop_labels(labels, no_label_id=8, p=0.1, generator=torch.Generator().manual_seed(0))
    changed = dropped != labels
    assert changed.float().mean().item() == pytest.approx(0.1, abs=0.006)
    assert (dropped[changed] == 8).all()
    kept = dropped != 8
    assert torch.equal(dropped[kept], labels[kept])
    assert torch.equal(drop_labels(labels, 8, p=0.0), labels)


def test_forward_shapes_and_input_checks():
    model = MaskedTokenTransformer(TINY)
    tokens = torch.randint(0, 64, (2, 48))
    tokens[0, :10] = MASK_ID
    logits = model(tokens, torch.tensor([0, TINY.num_classes]))
    assert logits.shape == (2, 48, 2, 8)
    with pytest.raises(ValueError, match="token values"):
        model(torch.full((2, 48), 64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="token values"):
        model(torch.full((2, 48), -2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        model(tokens, torch.tensor([0, TINY.num_classes + 1]))
    with pytest.raises(ValueError, match="grid"):
        model(tokens[:, :40], torch.tensor([0, 1]))


def test_model_is_bidirectional_and_uses_label_and_positions():
    torch.manual_seed(0)
    model = MaskedTokenTransformer(TINY).eval()
    tokens = torch.full((1, 48), MASK_ID)
    base = model(tokens, torch.tensor([1]))
    later = tokens.clone()
    later[0, -1] = 5  # the last token changes the prediction at the first position
    assert not torch.allclose(model(later, torch.tensor([1]))[0, 0], base[0, 0])
    assert not torch.allclose(model(tokens, torch.tensor([2]))[0, 0], base[0, 0])
    assert not torch.allclose(base[0, 0], base[0, 1])  # all-mask input: positions differ


def test_factorised_embedding_is_sum_of_sub_tables_and_heads_are_tied():
    torch.manual_seed(0)
    model = MaskedTokenTransformer(TINY).eval()
    table = model.token_embedding  # [2, 8, D]; token = low 3 bits + 8 * high 3 bits
    tokens = torch.tensor([[45, MASK_ID] + [0] * 46])
    embedded = model.embed_tokens(tokens)
    assert torch.allclose(embedded[0, 0], table[0, 45 % 8] + table[1, 45 // 8])
    assert torch.allclose(embedded[0, 1], model.mask_embedding)

    hidden = {}
    model.head_transform.register_forward_hook(lambda mod, args, out: hidden.update(h=out))
    logits = model(tokens, torch.tensor([0]))
    for j in range(2):  # head j = hidden @ E_j^T + b_j
        expected = hidden["h"] @ table[j].T + model.head_bias[j]
        assert torch.allclose(logits[:, :, j], expected, atol=1e-5)


def test_loss_is_sum_of_sub_token_cross_entropies_on_masked_positions():
    # bits 4 = 2 x 2 bits: token 9 = 0b1001 -> sub-tokens (low 1, high 2)
    logits = torch.tensor(
        [
            [[[2.0, 0.5, -1.0, 0.0], [0.3, 0.1, 1.2, -0.4]]],  # position 0 (masked)
            [[[9.0, -9.0, 9.0, -9.0], [5.0, 5.0, -5.0, 5.0]]],  # position 1 (not masked)
        ]
    ).reshape(1, 2, 2, 4)
    targets = torch.tensor([[9, 6]])
    mask = torch.tensor([[True, False]])
    low = -torch.log(torch.exp(logits[0, 0, 0, 1]) / torch.exp(logits[0, 0, 0]).sum())
    high = -torch.log(torch.exp(logits[0, 0, 1, 2]) / torch.exp(logits[0, 0, 1]).sum())
    assert masked_token_loss(logits, targets, mask).item() == pytest.approx((low + high).item())

    # the same joint distribution as one 16-way head: log p(token) = log p_low + log p_high
    log_p = logits.log_softmax(-1)
    joint = log_p[:, :, 0, :, None] + log_p[:, :, 1, None, :]  # [1, 2, low, high]
    flat = joint.transpose(-1, -2).reshape(1, 2, 1, 16)  # token = low + 4 * high
    assert masked_token_loss(flat, targets, mask).item() == pytest.approx((low + high).item())
    both = torch.ones_like(mask)
    assert masked_token_loss(flat, targets, both).item() == pytest.approx(
        masked_token_loss(logits, targets, both).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="masked"):
        masked_token_loss(logits, targets, torch.zeros_like(mask))


def test_accuracy_needs_every_sub_token_right():
    logits = torch.full((1, 3, 2, 4), -5.0)
    logits[0, 0, 0, 1] = logits[0, 0, 1, 2] = 5.0  # predicts 1 + 4 * 2 = 9
    logits[0, 1, 0, 1] = logits[0, 1, 1, 3] = 5.0  # predicts 13
    logits[0, 2, 0, 0] = logits[0, 2, 1, 0] = 5.0  # predicts 0
    targets = torch.tensor([[9, 9, 0]])
    mask = torch.tensor([[True, True, False]])
    assert masked_token_accuracy(logits, targets, mask).item() == pytest.approx(0.5)
    assert masked_token_accuracy(logits, targets, torch.ones_like(mask)).item() == pytest.approx(
        2 / 3
    )


def test_training_lowers_the_masked_token_loss():
    torch.manual_seed(0)
    config = MLMConfig(
        bits=6, num_factors=2, grid=(3, 4, 4), num_classes=4, dim=64, depth=2, heads=4
    )
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 64, (4, 48), generator=g)  # one token pattern per class
    labels = torch.arange(32) % 4
    tokens = (patterns[labels] + torch.randint(0, 4, (32, 1), generator=g)) % 64  # 32 clips

    model = MaskedTokenTransformer(config)
    eval_tokens, eval_labels = tokens.repeat(4, 1), labels.repeat(4)
    eval_inputs, eval_mask = mask_tokens(eval_tokens, torch.Generator().manual_seed(1))

    def eval_loss() -> float:
        with torch.no_grad():
            logits = model.eval()(eval_inputs, eval_labels)
            return masked_token_loss(logits, eval_tokens, eval_mask).item()

    before = eval_loss()
    assert before == pytest.approx(math.log(64), rel=0.05)  # near-uniform at init
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        inputs, mask = mask_tokens(tokens, g)
        batch_labels = drop_labels(labels, config.num_classes, 0.1, g)
        loss = masked_token_loss(model(inputs, batch_labels), tokens, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    print(f"masked-token loss before {before:.3f} after {after:.3f}")
    assert after < 0.5 * before

    # the held-out report: the label is used, and the model beats copying across frames
    report = masked_token_metrics(model, eval_tokens, eval_labels, 16, seed=0)
    print(report)
    assert report["val/label_loss_true"] < report["val/label_loss_wrong"] - 0.5
    assert report["val/label_loss_true"] < report["val/label_loss_none"]
    for name in ("masked_10", "masked_50", "masked_90", "frame_prediction"):
        assert report[f"val/{name}_accuracy"] > report[f"val/{name}_copy_accuracy"], name
    assert model.training  # the report leaves the model as it found it


def test_masked_token_report_copy_baselines_are_the_copy_functions():
    torch.manual_seed(0)
    model = MaskedTokenTransformer(TINY)
    tokens = torch.randint(0, 4, (16, 48))  # few values: copying is often right
    labels = torch.arange(16) % 5  # 4 = no label
    report = masked_token_metrics(model, tokens, labels, condition_tokens=16, seed=3)
    generator = torch.Generator().manual_seed(3)
    mask_tokens(tokens, generator)  # the report's first draw: the training-style mask
    ratio = torch.full((16,), 2 / math.pi * math.acos(0.1))
    _, mask = mask_tokens(tokens, generator, ratios=ratio)
    expected = (copy_neighbour_tokens(tokens, mask, TINY.grid) == tokens)[mask].float().mean()
    assert report["val/masked_10_copy_accuracy"] == pytest.approx(float(expected))
    assert int(mask.sum()) == 16 * math.ceil(0.1 * 48)
    copied = copy_last_condition_frame(tokens, 1, TINY.grid)
    future = (copied == tokens)[:, 16:].float().mean()
    assert report["val/frame_prediction_copy_accuracy"] == pytest.approx(float(future))


def test_save_and_from_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MaskedTokenTransformer(TINY).eval()
    model.save_pretrained(tmp_path / "mlm")
    assert sorted(p.name for p in (tmp_path / "mlm").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = MaskedTokenTransformer.from_pretrained(tmp_path / "mlm").eval()
    assert loaded.config == TINY
    tokens = torch.randint(0, 64, (3, 48))
    tokens[:, ::3] = MASK_ID
    labels = torch.tensor([0, 3, TINY.num_classes])
    assert torch.equal(model(tokens, labels), loaded(tokens, labels))

    with pytest.raises(FileNotFoundError, match="nowhere"):
        MaskedTokenTransformer.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "mlm" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MaskedTokenTransformer.from_pretrained(tmp_path / "mlm")


def test_config_dict_round_trip_and_checks():
    config = MLMConfig.preset("cpu", num_classes=11)
    assert MLMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        MLMConfig.from_dict({**config.to_dict(), "width": 3})
    with pytest.raises(ValueError, match="divide"):
        MLMConfig(bits=10, num_factors=3)
    with pytest.raises(ValueError, match="preset"):
        MLMConfig.preset("huge")


def test_presets():
    cpu = MLMConfig.preset("cpu")
    assert (cpu.grid, cpu.bits, cpu.num_factors, cpu.sub_vocab_size) == ((3, 8, 8), 10, 10, 2)
    bitwise = MLMConfig.preset("cpu", bits=18)  # one head per bit for any vocabulary
    assert (bitwise.num_factors, bitwise.sub_vocab_size) == (18, 2)
    assert MLMConfig.preset("cpu", bits=18, num_factors=2).sub_vocab_size == 512
    model = MaskedTokenTransformer(cpu)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000

    paper = MLMConfig.preset("paper")
    assert (paper.grid, paper.bits, paper.num_factors, paper.sub_vocab_size) == (
        (5, 16, 16),
        18,
        2,
        512,
    )
    with torch.device("meta"):  # build without allocating ~1.2 GB
        big = MaskedTokenTransformer(paper)
    assert 290e6 < sum(p.numel() for p in big.parameters()) < 320e6  # paper: ~307M
    assert big.token_embedding.shape == (2, 512, 1024)
    assert big.label_embedding.num_embeddings == paper.num_classes + 1
