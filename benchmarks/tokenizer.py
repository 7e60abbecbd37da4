"""Tokenizer throughput: encode and decode clips/s per preset, plus a training step.

    .venv/bin/python benchmarks/tokenizer.py                  # both presets
    .venv/bin/python benchmarks/tokenizer.py --presets cpu --train-step --repeats 5

Random weights and random clips: speed does not depend on what the model has learnt.
"""

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.tokenizer import MagvitTokenizer, TokenizerConfig


def seconds_per_call(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls (with 3 or more, a slow first call drops out)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def train_step_fn(model: MagvitTokenizer, clip: torch.Tensor) -> Callable[[], None]:
    video = clip.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        recon, out = model(video)
        loss = F.mse_loss(recon, video) + out.losses["commitment"] + 0.1 * out.losses["entropy"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def benchmark(preset: str, batch: int, repeats: int, train_step: bool) -> dict[str, str]:
    cfg = TokenizerConfig.preset(preset)
    model = MagvitTokenizer(cfg).eval()
    clip = torch.randint(0, 256, (batch, cfg.num_frames, cfg.resolution, cfg.resolution, 3))
    clip = clip.to(torch.uint8)
    tokens = model.encode(clip)
    encode_s = seconds_per_call(lambda: model.encode(clip), repeats)
    decode_s = seconds_per_call(lambda: model.decode(tokens), repeats)
    row = {
        "preset": preset,
        "params": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        "clip TxHxW": f"{cfg.num_frames}x{cfg.resolution}x{cfg.resolution}",
        "tokens txhxw": "x".join(map(str, tokens.shape[1:])),
        "K": str(cfg.codebook_size),
        "batch": str(batch),
        "encode clips/s": f"{batch / encode_s:.2f}",
        "decode clips/s": f"{batch / decode_s:.2f}",
    }
    if train_step:
        step_s = seconds_per_call(train_step_fn(model.train(), clip), repeats)
        row["train step s/batch"] = f"{step_s:.3f}"
    return row


def print_table(rows: list[dict[str, str]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(row.get(c, "-")) for row in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(row.get(c, "-").ljust(widths[c]) for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="cpu,paper", help="comma-separated presets")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls, cpu preset")
    parser.add_argument("--paper-repeats", type=int, default=1, help="timed calls, paper preset")
    parser.add_argument("--cpu-batch", type=int, default=4, help="batch for the cpu preset")
    parser.add_argument("--paper-batch", type=int, default=1, help="batch for the paper preset")
    parser.add_argument("--train-step", action="store_true", help="also time forward+backward")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = {"cpu": args.cpu_batch, "paper": args.paper_batch}
    repeats = {"cpu": args.repeats, "paper": args.paper_repeats}
    rows = [
        benchmark(preset, batches[preset], repeats[preset], args.train_step)
        for preset in args.presets.split(",")
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(rows)


if __name__ == "__main__":
    main()
