import math

import pytest
import torch

from models.maskgit import SamplerConfig, predict_tokens, sample, sample_token_by_token
from models.mlm import MASK_ID, MaskedTokenTransformer, MLMConfig

TINY = MLMConfig(bits=6, num_factors=2, grid=(3, 4, 4), num_classes=4, dim=32, depth=2, heads=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and much faster on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> MaskedTokenTransformer:
    torch.manual_seed(0)
    return MaskedTokenTransformer(TINY).eval()


def record_inputs(model: MaskedTokenTransformer) -> list[torch.Tensor]:
    """Every token tensor the model is called with, in order."""
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].clone()))
    return calls


class FixedLogits(MaskedTokenTransformer):
    """Returns the same logits [N, m, V] for every sample, whatever the input."""

    def __init__(self, config: MLMConfig, logits: torch.Tensor):
        super().__init__(config)
        self.register_buffer("fixed", logits)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.fixed.expand(tokens.shape[0], *self.fixed.shape)


def expected_masked_counts(maskable: int, steps: int) -> list[int]:
    """Masked tokens in the input of each step: cosine schedule, >= 1 and decreasing."""
    counts = [maskable]
    for step in range(steps - 1):
        scheduled = math.floor(maskable * math.cos(math.pi / 2 * (step + 1) / steps))
        counts.append(max(1, min(counts[-1] - 1, scheduled)))
    return counts


def test_sample_output_is_valid_and_follows_the_schedule(model):
    calls = record_inputs(model)
    labels = torch.tensor([0, 1, 2, TINY.num_classes])
    tokens = sample(model, labels, SamplerConfig(steps=12), seed=0)
    assert tokens.shape == (4, 48) and tokens.dtype == torch.int64
    assert tokens.min() >= 0 and tokens.max() < 64

    assert len(calls) == 12
    counts = [(c == MASK_ID).sum(-1).tolist() for c in calls]
    assert counts == [[n] * 4 for n in expected_masked_counts(48, 12)]
    # floor(48 cos(pi/2 k/12)) by hand, then 0 after the last step
    assert [c[0] for c in counts] == [48, 47, 46, 44, 41, 38, 33, 29, 24, 18, 12, 6]
    # a token decided at one step is kept, unchanged, until the end
    for before, after in zip(calls, [*calls[1:], tokens], strict=True):
        decided = before != MASK_ID
        assert torch.equal(after[decided], before[decided])


def test_condition_tokens_are_never_masked_or_changed(model):
    calls = record_inputs(model)
    labels = torch.tensor([0, 1, 2])
    condition = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(5))
    tokens = sample(model, labels, SamplerConfig(steps=8), condition_tokens=condition)
    assert torch.equal(tokens[:, :16], condition)
    assert (tokens != MASK_ID).all() and tokens.max() < 64
    for inputs in calls:
        assert torch.equal(inputs[:, :16], condition)
    assert [(c == MASK_ID).sum(-1)[0].item() for c in calls] == expected_masked_counts(32, 8)

    # few maskable tokens, many steps: at least one token is decided per step while it can be
    calls.clear()
    sample(model, labels, SamplerConfig(steps=12), condition_tokens=torch.zeros(3, 40).long())
    assert [(c == MASK_ID).sum(-1)[0].item() for c in calls] == [8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1]

    with pytest.raises(ValueError, match="condition"):
        sample(model, labels, condition_tokens=torch.full((3, 4), 64))


def test_sampling_is_deterministic_under_a_seed(model):
    labels = torch.tensor([0, 1, 2, 3])
    a = sample(model, labels, seed=7)
    assert torch.equal(a, sample(model, labels, seed=7))
    assert torch.equal(a, sample(model, labels, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, sample(model, labels, seed=8))


def test_sampling_uses_eval_mode_and_restores_training():
    torch.manual_seed(0)
    model = MaskedTokenTransformer(MLMConfig(**{**TINY.to_dict(), "dropout": 0.5})).train()
    labels = torch.tensor([0, 1])
    a = sample(model, labels, seed=0)
    torch.manual_seed(123)  # dropout would draw from the global RNG
    assert torch.equal(a, sample(model, labels, seed=0))
    assert model.training


def test_guidance_scale_zero_never_consults_the_unconditional_model(model):
    labels = torch.tensor([0, 1, 2, 3])
    corrupted = MaskedTokenTransformer(TINY).eval()
    corrupted.load_state_dict(model.state_dict())
    with torch.no_grad():  # the no-label embedding now says something entirely different
        corrupted.label_embedding.weight[TINY.num_classes] = 5 * torch.randn(TINY.dim)
    for schedule in ("constant", "linear", "cosine"):
        unguided = SamplerConfig(guidance_scale=0.0, guidance_schedule=schedule)
        assert torch.equal(sample(model, labels, unguided), sample(corrupted, labels, unguided))
    guided = SamplerConfig(guidance_scale=3.0, guidance_schedule="constant")
    assert not torch.equal(sample(model, labels, guided), sample(corrupted, labels, guided))


class HandGuided(MaskedTokenTransformer):
    """cond + w * (cond - uncond), written out with two separate forward passes."""

    def __init__(self, config: MLMConfig, weight: float):
        super().__init__(config)
        self.weight = weight

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cond = super().forward(tokens, labels)
        uncond = super().forward(tokens, torch.full_like(labels, self.no_label_id))
        return cond + self.weight * (cond - uncond)


def test_guided_sampling_uses_the_guidance_formula(model):
    labels = torch.tensor([0, 1, 2, 3])
    hand = HandGuided(TINY, weight=2.0).eval()
    hand.load_state_dict(model.state_dict())
    guided = SamplerConfig(guidance_scale=2.0, guidance_schedule="constant")
    expected = sample(hand, labels, SamplerConfig(guidance_scale=0.0), seed=3)
    assert torch.equal(sample(model, labels, guided, seed=3), expected)


def test_guidance_schedules():
    constant = SamplerConfig(guidance_scale=4.0, guidance_schedule="constant")
    linear = SamplerConfig(guidance_scale=4.0, guidance_schedule="linear")
    cosine = SamplerConfig(guidance_scale=4.0, guidance_schedule="cosine", guidance_power=2.0)
    assert [constant.guidance_at(p) for p in (0.25, 1.0)] == [4.0, 4.0]
    assert [linear.guidance_at(p) for p in (0.25, 1.0)] == [1.0, 4.0]
    assert cosine.guidance_at(1.0) == pytest.approx(4.0)
    assert cosine.guidance_at(0.5**0.5) == pytest.approx(2.0)  # (1 - cos(pi / 2)) / 2 * 4
    with pytest.raises(ValueError, match="guidance_schedule"):
        SamplerConfig(guidance_schedule="quadratic")


def test_factorised_sampling_draws_from_the_joint_and_scores_its_log_probability():
    # 4 bits = 2 sub-tokens of 2 bits; token = low + 4 * high
    config = MLMConfig(bits=4, num_factors=2, grid=(1, 32, 32), num_classes=1, dim=8, depth=1)
    heads = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, -0.5, 0.3]])  # [m, V]
    stub = FixedLogits(config, heads.expand(1024, 2, 4).clone())
    p_low, p_high = heads.softmax(-1)
    joint = torch.tensor([p_low[t % 4] * p_high[t // 4] for t in range(16)])

    tokens, confidence = predict_tokens(
        stub,
        torch.full((8, 1024), MASK_ID),
        torch.zeros(8, dtype=torch.long),
        guidance=0.0,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(confidence, joint[tokens].log(), atol=1e-5)
    frequency = torch.bincount(tokens.flatten(), minlength=16).float() / tokens.numel()
    assert torch.allclose(frequency, joint, atol=0.015)

    # temperature divides the logits of each head before the softmax
    hot_tokens, hot = predict_tokens(
        stub, torch.full((1, 1024), MASK_ID), torch.zeros(1).long(), 0.0, 2.0, torch.Generator()
    )
    t_low, t_high = (heads / 2).softmax(-1)
    tempered = torch.tensor([t_low[t % 4] * t_high[t // 4] for t in range(16)])
    assert torch.allclose(hot, tempered[hot_tokens].log(), atol=1e-5)

    # one step decodes everything from the same joint distribution
    one_step = sample(stub, torch.zeros(8).long(), SamplerConfig(steps=1), seed=1)
    frequency = torch.bincount(one_step.flatten(), minlength=16).float() / one_step.numel()
    assert torch.allclose(frequency, joint, atol=0.015)


def test_least_confident_tokens_are_remasked():
    # m = 1, 5 bits: position p is uniform over its first p + 1 tokens -> confidence -log(p + 1)
    config = MLMConfig(bits=5, num_factors=1, grid=(1, 4, 4), num_classes=1, dim=8, depth=1)
    logits = torch.full((16, 1, 32), -1e4)
    for p in range(16):
        logits[p, 0, : p + 1] = 0.0
    stub = FixedLogits(config, logits)
    calls = record_inputs(stub)
    tokens = sample(stub, torch.zeros(2).long(), SamplerConfig(steps=2, choice_temperature=0.0))
    kept = 16 - math.floor(16 * math.cos(math.pi / 4))  # 5 decided after step 1
    decided = calls[1] != MASK_ID
    assert decided[:, :kept].all() and not decided[:, kept:].any()
    assert (tokens <= torch.arange(16)).all()  # each token from its position's support


def test_token_by_token_raster_decodes_one_position_per_call(model):
    calls = record_inputs(model)
    condition = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    tokens = sample_token_by_token(model, torch.tensor([0, 1]), condition_tokens=condition)
    assert len(calls) == 32
    for step, inputs in enumerate(calls):
        assert torch.equal(inputs[:, :16], condition)
        assert (inputs[:, : 16 + step] != MASK_ID).all()
        assert (inputs[:, 16 + step :] == MASK_ID).all()
    assert torch.equal(tokens[:, :16], condition)
    assert tokens.min() >= 0 and tokens.max() < 64
    assert torch.equal(
        tokens,
        sample_token_by_token(model, torch.tensor([0, 1]), condition_tokens=condition),
    )


def test_token_by_token_confidence_order(model):
    calls = record_inputs(model)
    tokens = sample_token_by_token(model, torch.tensor([0, 3]), order="confidence", seed=2)
    assert len(calls) == 48
    assert [(c == MASK_ID).sum(-1).tolist() for c in calls] == [[48 - s] * 2 for s in range(48)]
    assert tokens.min() >= 0 and tokens.max() < 64
    with pytest.raises(ValueError, match="order"):
        sample_token_by_token(model, torch.tensor([0]), order="random")
