"""Sampling speed: MaskGIT decoding (12 steps) vs one token per step, with the same network.

The cpu-preset masked token transformer (3x8x8 tokens of 18 bits as the cpu profile's, one
head per bit) with random weights, or a trained one from --model. Throughput is clips per
second, the median of --repeats runs after one warm-up run; each run decodes --batch
class-conditional clips.

    python benchmarks/sampling.py --batch 4 --repeats 2
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.maskgit import SamplerConfig, sample, sample_token_by_token  # noqa: E402
from models.mlm import MaskedTokenTransformer, MLMConfig  # noqa: E402


def clips_per_second(run: Callable[[int], torch.Tensor], batch: int, repeats: int) -> float:
    run(0)  # warm-up
    seconds = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        run(seed)
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="clips decoded per run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (median)")
    parser.add_argument("--steps", type=int, default=12, help="MaskGIT decoding steps")
    parser.add_argument("--model", type=Path, help="trained model directory (default: random)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    if args.model:
        model = MaskedTokenTransformer.from_pretrained(args.model)
    else:
        model = MaskedTokenTransformer(MLMConfig.preset("cpu", bits=18))
    model.eval()
    cfg = model.config
    labels = torch.arange(args.batch) % (cfg.num_classes + 1)
    sampler = SamplerConfig(steps=args.steps)

    maskgit = clips_per_second(
        lambda seed: sample(model, labels, sampler, seed=seed), args.batch, args.repeats
    )
    token_by_token = clips_per_second(
        lambda seed: sample_token_by_token(model, labels, sampler, seed=seed),
        args.batch,
        args.repeats,
    )
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: grid {cfg.grid} = {cfg.num_tokens} tokens, 2^{cfg.bits} vocabulary as "
        f"{cfg.num_factors} x 2^{cfg.bits // cfg.num_factors}, {params / 1e6:.2f}M parameters; "
        f"batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'sampler':<16}{'network calls':>14}{'clips/s':>12}")
    print(f"{f'maskgit ({args.steps})':<16}{args.steps:>14}{maskgit:>12.2f}")
    print(f"{'token-by-token':<16}{cfg.num_tokens:>14}{token_by_token:>12.3f}")
    print(f"speed-up: {maskgit / token_by_token:.1f}x")


if __name__ == "__main__":
    main()
