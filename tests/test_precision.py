"""bf16 autocast in both trainers' steps, on CPU: the GPU code path, run where there is none."""

import pytest
import torch

from magvit.params import TrainTokenizerParams
from magvit.training import mlm_loop, tokenizer_loop
from magvit.training.precision import use_bf16
from models.mlm import MaskedTokenTransformer, MLMConfig, mask_tokens
from models.tokenizer import TokenizerConfig

CPU = torch.device("cpu")
# the same steps on a GPU where one is present (`pytest -m gpu` runs only those)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


def output_dtypes(module: torch.nn.Module, kind: type) -> list[torch.dtype]:
    """Records the output dtype of every `kind` layer of `module` on each forward."""
    seen = []
    for layer in module.modules():
        if isinstance(layer, kind):
            layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_the_setting_turns_bf16_on_off_or_on_for_capable_gpus_only():
    assert use_bf16("on", CPU) and not use_bf16("off", CPU)
    assert not use_bf16("auto", CPU)  # autocast on CPU is for testing the path, not speed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_auto_means_bf16_on_a_gpu_that_has_it():
    cuda = torch.device("cuda")
    assert use_bf16("auto", cuda) == torch.cuda.is_bf16_supported() and not use_bf16("off", cuda)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bf16", [True, False])
def test_tokenizer_step_runs_its_convolutions_in_bf16_when_on(bf16, device):
    torch.manual_seed(0)
    config = TokenizerConfig.from_dict(
        {**TokenizerConfig.preset("cpu").to_dict(), "channels": 8, "norm_groups": 4}
    )
    p = TrainTokenizerParams(steps=4, warmup_steps=1, disc_start_step=0, gan_weight=0.1)
    models = tokenizer_loop.build_models(config, p, torch.device(device))
    convs = output_dtypes(models.generator, torch.nn.Conv3d)
    disc_convs = output_dtypes(models.discriminator, torch.nn.Conv3d)
    before = [q.detach().clone() for q in models.generator.parameters()]
    x = torch.rand(2, 3, 5, 32, 32, device=device) * 2 - 1
    losses, loss_g, _, _ = tokenizer_loop.train_step(
        models, models.generator, models.discriminator, x, 1, p, bf16=bf16
    )
    expected = torch.bfloat16 if bf16 else torch.float32
    assert convs and set(convs) == {expected}
    assert disc_convs and set(disc_convs) == {expected}  # the GAN's forward too
    assert loss_g.dtype == torch.float32 and torch.isfinite(loss_g)
    assert all(torch.isfinite(v).all() for v in losses.values()) and "d_hinge" in losses
    after = list(models.generator.parameters())
    assert all(q.dtype == torch.float32 for q in after)  # the weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bf16", [True, False])
def test_mlm_step_runs_the_transformer_in_bf16_when_on(bf16, device):
    torch.manual_seed(0)
    config = MLMConfig(
        bits=6, num_factors=2, grid=(3, 4, 4), num_classes=4, dim=32, depth=2, heads=4
    )
    model = MaskedTokenTransformer(config).to(device)
    linears = output_dtypes(model, torch.nn.Linear)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 2**6, (4, 48), device=device)
    inputs, mask = mask_tokens(tokens, torch.Generator(device).manual_seed(0))
    labels = torch.tensor([0, 1, 2, 4], device=device)
    before = [q.detach().clone() for q in model.parameters()]
    loss, logits = mlm_loop.train_step(
        model, optimizer, (inputs, labels, tokens, mask), 1e-3, 1.0, bf16
    )
    expected = torch.bfloat16 if bf16 else torch.float32
    assert linears and set(linears) == {expected}
    assert torch.isfinite(logits).all()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    after = list(model.parameters())
    assert all(q.dtype == torch.float32 for q in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
