import itertools

import pytest
import torch
from einops import rearrange

from models.lfq import (
    LFQ,
    LFQConfig,
    entropy_weight_at,
    factorize_indices,
    lfq_entropy,
    unfactorize_indices,
)


def brute_force_probs(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-codebook soft assignment softmax(-||z - c||^2 / temperature) over all 2^bits corners.

    z: [N, bits] -> (probs [N, 2^bits], codes [2^bits, bits]); code k has bit i set iff c_i = +1.
    Built independently of models.lfq (itertools, explicit distances), in float64.
    """
    bits = z.shape[-1]
    corners = [
        [1.0 if (k >> i) & 1 else -1.0 for i in range(bits)] for k in range(2**bits)
    ]  # [2^bits, bits]
    codes = torch.tensor(corners, dtype=torch.float64)
    distances = ((z.double()[:, None, :] - codes[None]) ** 2).sum(-1)  # [N, 2^bits]
    return (-distances / temperature).softmax(-1), codes


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def video_to_tokens(z: torch.Tensor) -> torch.Tensor:
    return rearrange(z, "b c t h w -> (b t h w) c")


def test_indices_codes_round_trip_all_indices():
    bits = 7
    lfq = LFQ(LFQConfig(bits=bits))
    indices = torch.arange(2**bits).reshape(2, 4, 4, 4)  # [B, T, H, W]
    codes = lfq.indices_to_codes(indices)
    assert codes.shape == (2, bits, 4, 4, 4)
    assert codes.dtype == torch.float32
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    # channel i is +1 exactly when bit i of the index is set
    for i in range(bits):
        assert torch.equal(codes[:, i] > 0, (indices >> i) & 1 == 1)
    assert torch.equal(lfq.codes_to_indices(codes), indices)
    assert lfq.codebook_size == 2**bits


def test_forward_quantises_by_sign_and_indexes_bits():
    bits = 5
    lfq = LFQ(LFQConfig(bits=bits))
    z = torch.randn(2, bits, 3, 4, 4)
    z[0, 2, 0, 0, 0] = 0.0  # zero quantises to -1 (bit unset)
    out = lfq(z)
    assert out.codes.shape == z.shape
    assert out.indices.shape == (2, 3, 4, 4)
    assert out.indices.dtype == torch.int64
    expected_codes = torch.where(z > 0, 1.0, -1.0)
    assert torch.equal(out.codes, expected_codes)
    assert out.codes[0, 2, 0, 0, 0] == -1.0
    expected_indices = sum((2**i) * (z[:, i] > 0).long() for i in range(bits))
    assert torch.equal(out.indices, expected_indices)
    assert torch.equal(lfq.indices_to_codes(out.indices), expected_codes)


@pytest.mark.parametrize("temperature, scale", [(0.01, 0.01), (0.5, 1.0)])
def test_entropies_match_full_codebook_when_one_group(temperature, scale):
    bits = 6
    torch.manual_seed(0)
    lfq = LFQ(LFQConfig(bits=bits, entropy_group_size=9, temperature=temperature))  # 9 -> 6
    z = torch.randn(2, bits, 2, 3, 3) * scale
    losses = lfq(z).losses

    probs, _ = brute_force_probs(video_to_tokens(z), temperature)
    per_token = entropy(probs).mean()
    codebook = entropy(probs.mean(0))
    assert per_token > 1e-2 and codebook > 1e-2  # non-trivial regime
    torch.testing.assert_close(
        losses["per_token_entropy"].double(), per_token, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(losses["codebook_entropy"].double(), codebook, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        losses["entropy"].double(), per_token - codebook, rtol=1e-4, atol=1e-5
    )


def test_entropy_gradient_matches_full_codebook():
    bits, temperature = 6, 0.1
    torch.manual_seed(1)
    z = (torch.randn(40, bits) * 0.3).double()

    z_fact = z.clone().requires_grad_(True)
    per_token, codebook = lfq_entropy(z_fact, temperature, group_size=bits)
    (per_token - codebook).backward()

    z_brute = z.clone().requires_grad_(True)
    probs, _ = brute_force_probs(z_brute, temperature)
    (entropy(probs).mean() - entropy(probs.mean(0))).backward()

    torch.testing.assert_close(z_fact.grad, z_brute.grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "group_size, groups", [(2, [[0, 1], [2, 3], [4, 5]]), (4, [[0, 1, 2, 3], [4, 5]])]
)
def test_subgroup_codebook_entropy_is_sum_of_marginal_entropies(group_size, groups):
    bits, temperature = 6, 0.05
    torch.manual_seed(2)
    lfq = LFQ(LFQConfig(bits=bits, entropy_group_size=group_size, temperature=temperature))
    z = torch.randn(1, bits, 3, 4, 4) * 0.05
    losses = lfq(z).losses

    probs, codes = brute_force_probs(video_to_tokens(z), temperature)  # [N, 64], [64, 6]
    expected = torch.zeros((), dtype=torch.float64)
    for dims in groups:
        # marginalise the full 64-way distribution onto this group's 2^g sign patterns
        avg = probs.mean(0)
        marginal = []
        for pattern in itertools.product([-1.0, 1.0], repeat=len(dims)):
            match = (codes[:, dims] == torch.tensor(pattern, dtype=torch.float64)).all(-1)
            marginal.append(avg[match].sum())
        expected = expected + entropy(torch.stack(marginal))
    joint = entropy(probs.mean(0))

    torch.testing.assert_close(losses["codebook_entropy"].double(), expected, rtol=1e-4, atol=1e-5)
    assert expected >= joint - 1e-9  # subadditivity: the group estimate bounds the joint above
    torch.testing.assert_close(
        losses["per_token_entropy"].double(), entropy(probs).mean(), rtol=1e-4, atol=1e-5
    )


def test_straight_through_gradient_reaches_input():
    lfq = LFQ(LFQConfig(bits=4))
    z = torch.randn(2, 4, 1, 3, 3, requires_grad=True)
    weight = torch.randn_like(z)
    (lfq(z).codes * weight).sum().backward()
    torch.testing.assert_close(z.grad, weight)  # identity gradient through the quantiser


def test_loss_gradients_reach_input():
    lfq = LFQ(LFQConfig(bits=4, temperature=0.5))
    z = torch.randn(2, 4, 1, 3, 3, requires_grad=True)
    losses = lfq(z).losses
    for name in ("commitment", "entropy"):
        (grad,) = torch.autograd.grad(losses[name], z, retain_graph=True)
        assert grad.abs().sum() > 0, name


def test_commitment_loss_value():
    lfq = LFQ(LFQConfig(bits=3, commitment_weight=0.25))
    z = torch.tensor([0.5, -2.0, 0.0]).reshape(1, 3, 1, 1, 1)
    # quantised: [1, -1, -1]; squared errors 0.25, 1, 1 -> mean 0.75
    torch.testing.assert_close(lfq(z).losses["commitment"], torch.tensor(0.25 * 0.75))


def test_entropy_in_float32_under_bf16_autocast():
    bits = 6
    torch.manual_seed(3)
    lfq = LFQ(LFQConfig(bits=bits, entropy_group_size=3))
    z = (torch.randn(2, bits, 2, 4, 4) * 0.02).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = lfq(z).losses
    reference = lfq(z.float()).losses
    for name in ("per_token_entropy", "codebook_entropy", "entropy"):
        assert losses[name].dtype == torch.float32, name
        torch.testing.assert_close(losses[name], reference[name], rtol=1e-5, atol=1e-6)


def test_entropy_weight_schedule():
    assert entropy_weight_at(0, 0.1) == pytest.approx(0.3)
    assert entropy_weight_at(1000, 0.1) == pytest.approx(0.2)
    assert entropy_weight_at(2000, 0.1) == pytest.approx(0.1)
    assert entropy_weight_at(10_000, 0.1) == pytest.approx(0.1)
    assert entropy_weight_at(50, 1.0, start_multiplier=2.0, decay_steps=100) == pytest.approx(1.5)


def test_factorize_round_trip_and_bit_layout():
    indices = torch.randint(0, 2**18, (2, 5, 16, 16))
    sub = factorize_indices(indices, bits=18, num_factors=2)
    assert sub.shape == (2, 5, 16, 16, 2)
    assert sub.min() >= 0 and sub.max() < 2**9
    torch.testing.assert_close(sub[..., 0], indices % 512)
    torch.testing.assert_close(sub[..., 1], indices // 512)
    assert torch.equal(unfactorize_indices(sub, bits=18, num_factors=2), indices)

    sub3 = factorize_indices(indices, bits=18, num_factors=3)
    assert torch.equal(unfactorize_indices(sub3, bits=18, num_factors=3), indices)

    # sub-token j is the LFQ token of channels j*bits/m .. (j+1)*bits/m - 1
    lfq6, lfq2 = LFQ(LFQConfig(bits=6)), LFQ(LFQConfig(bits=2))
    codes = lfq6.indices_to_codes(torch.arange(64).reshape(1, 1, 8, 8))
    sub = factorize_indices(lfq6.codes_to_indices(codes), bits=6, num_factors=3)
    for j in range(3):
        assert torch.equal(sub[..., j], lfq2.codes_to_indices(codes[:, 2 * j : 2 * j + 2]))


def test_factorize_rejects_non_divisor():
    with pytest.raises(ValueError, match=r"num_factors=4.*bits=18"):
        factorize_indices(torch.zeros(3, dtype=torch.long), bits=18, num_factors=4)
    with pytest.raises(ValueError, match=r"num_factors=4.*bits=18"):
        unfactorize_indices(torch.zeros(3, 4, dtype=torch.long), bits=18, num_factors=4)


def test_config_validation():
    with pytest.raises(ValueError, match="bits"):
        LFQConfig(bits=0)
    with pytest.raises(ValueError, match="channels"):
        LFQ(LFQConfig(bits=4))(torch.randn(1, 3, 1, 2, 2))


def _codebook_entropy_on_worker(rank: int, port: int, z: torch.Tensor, out: dict) -> None:
    """One of two gloo workers: LFQ on its half of `z`, training and eval mode."""
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
        timeout=timedelta(seconds=20),
    )  # fmt: skip
    lfq = LFQ(LFQConfig(bits=4, entropy_group_size=4, temperature=0.5))
    half = z.chunk(2)[rank].clone().requires_grad_(True)
    losses = lfq(half).losses
    losses["entropy"].backward()
    out[rank] = {
        "codebook": float(losses["codebook_entropy"]),
        "grad": half.grad.clone(),
    }
    if rank == 0:  # evaluation runs on one worker alone: it must not wait for the other
        out["eval_codebook"] = float(lfq.eval()(half.detach()).losses["codebook_entropy"])
    dist.barrier()
    dist.destroy_process_group()


def test_codebook_entropy_is_estimated_over_every_workers_tokens():
    import socket

    import torch.multiprocessing as mp

    z = torch.randn(4, 4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_codebook_entropy_on_worker, args=(port, z, out), nprocs=2)

    everything = lfq_entropy(video_to_tokens(z), 0.5, 4)[1]
    first_half = lfq_entropy(video_to_tokens(z.chunk(2)[0]), 0.5, 4)[1]
    # the gradient of the one-process loss over all tokens; DDP averages the two workers'
    # gradients, so each worker's gradient on its half must be 2x that half of it
    whole = z.clone().requires_grad_(True)
    lfq = LFQ(LFQConfig(bits=4, entropy_group_size=4, temperature=0.5))
    lfq(whole).losses["entropy"].backward()
    for rank in (0, 1):
        assert out[rank]["codebook"] == pytest.approx(float(everything), rel=1e-5)
        torch.testing.assert_close(out[rank]["grad"], 2 * whole.grad.chunk(2)[rank])
    assert out["eval_codebook"] == pytest.approx(float(first_half), rel=1e-5)
    assert abs(float(everything) - float(first_half)) > 1e-3  # the halves differ
