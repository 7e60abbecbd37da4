"""The paper profile's training steps on one device: seconds per step and peak memory of the
tokenizer step (generator + discriminator, as `train_tokenizer` runs it) and the masked
model's step, and tokenize throughput (encode clips/s), with the profile's bf16 setting.

    .venv/bin/python benchmarks/gpu_profile.py                    # params/paper.yaml on cuda
    .venv/bin/python benchmarks/gpu_profile.py --device cpu --tiny   # the same code, tiny, CPU

One worker's share of the profile's batch (train_tokenizer.batch_size clips, train_mlm.batch_size
grids); random weights and inputs: speed does not depend on what the models have learnt.
--tiny swaps in the cpu presets at 9 x 64 x 64 and batch 2 so the script can be checked
without a GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from magvit.params import Params, parse_params
from magvit.profile import merge
from magvit.training import mlm_loop, tokenizer_loop
from magvit.training.precision import use_bf16
from models.mlm import MaskedTokenTransformer, mask_tokens

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "decode": {"num_frames": 9, "crop_size": 64, "resize_short_side": 72},
    "tokenizer": {"preset": "cpu"},
    "mlm": {"preset": "cpu"},
    "train_tokenizer": {"batch_size": 2},
    "train_mlm": {"batch_size": 2},
}


def profile_params(profile: Path, tiny: bool) -> Params:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = merge(base, yaml.safe_load(profile.read_text()))
    return parse_params(merge(merged, TINY) if tiny else merged, str(profile))


def timed(step, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds per call after one warm-up call, peak GiB allocated; 0 off CUDA)."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return sorted(times)[len(times) // 2], peak


def tokenizer_step(params: Params, device: torch.device, repeats: int) -> dict[str, str]:
    p, decode = params.train_tokenizer, params.decode
    # the discriminator trains from the first step here, as it does after disc_start_step
    p = p.model_copy(update={"disc_start_step": 0})
    models = tokenizer_loop.build_models(params.tokenizer.config(), p, device)
    size = (p.batch_size, 3, decode.num_frames, decode.crop_size, decode.crop_size)
    x = torch.rand(size, device=device) * 2 - 1
    bf16 = use_bf16(p.bf16, device)
    step = 0

    def one() -> None:
        nonlocal step
        tokenizer_loop.train_step(
            models, models.generator, models.discriminator, x, step, p, bf16=bf16
        )
        step += 1

    seconds, peak = timed(one, device, repeats)
    return {"step": "tokenizer + discriminator", "batch": str(p.batch_size),
            "bf16": str(bf16), "s/step": f"{seconds:.3f}", "peak GiB": f"{peak:.2f}"}  # fmt: skip


def mlm_step(params: Params, device: torch.device, repeats: int) -> dict[str, str]:
    p = params.train_mlm
    config = params.mlm_config(params.tokenizer.config())
    model = MaskedTokenTransformer(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=p.betas)
    tokens = torch.randint(0, config.vocab_size, (p.batch_size, config.num_tokens), device=device)
    inputs, mask = mask_tokens(tokens, torch.Generator(device).manual_seed(0))
    labels = torch.zeros(p.batch_size, dtype=torch.long, device=device)
    bf16 = use_bf16(p.bf16, device)
    batch = (inputs, labels, tokens, mask)
    seconds, peak = timed(
        lambda: mlm_loop.train_step(model, optimizer, batch, p.lr, p.grad_clip, bf16),
        device,
        repeats,
    )
    return {"step": "masked model", "batch": str(p.batch_size), "bf16": str(bf16),
            "s/step": f"{seconds:.3f}", "peak GiB": f"{peak:.2f}"}  # fmt: skip


def encode_throughput(params: Params, device: torch.device, repeats: int) -> dict[str, str]:
    from models.tokenizer import MagvitTokenizer

    decode, batch = params.decode, params.tokenize.batch_size
    model = MagvitTokenizer(params.tokenizer.config()).to(device).eval()
    size = (batch, decode.num_frames, decode.crop_size, decode.crop_size, 3)
    clips = torch.randint(0, 256, size, dtype=torch.uint8, device=device)
    with torch.no_grad():
        seconds, peak = timed(lambda: model.encode(clips), device, repeats)
    return {"step": "tokenize (encode)", "batch": str(batch), "bf16": "False",
            "s/step": f"{seconds:.3f}", "peak GiB": f"{peak:.2f}",
            "clips/s": f"{batch / seconds:.1f}"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=ROOT / "params" / "paper.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after a warm-up")
    parser.add_argument("--tiny", action="store_true", help="cpu presets, batch 2 (a check)")
    args = parser.parse_args()
    device = torch.device(args.device)
    params = profile_params(args.profile, args.tiny)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.profile.name}{' (tiny)' if args.tiny else ''} on {name}, torch {torch.__version__}"
    )
    for row in (
        tokenizer_step(params, device, args.repeats),
        mlm_step(params, device, args.repeats),
        encode_throughput(params, device, args.repeats),
    ):
        print("  ".join(f"{k}: {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
