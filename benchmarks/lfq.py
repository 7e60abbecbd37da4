"""LFQ entropy loss at K = 2^18: factorised (models.lfq) vs a naive full-codebook softmax.

Each variant runs in a fresh subprocess; its peak memory is the rise of the process's resident
set size high-water mark (VmHWM, reset after setup via /proc/self/clear_refs; ru_maxrss as a
fallback) during one forward + backward, so torch's import and the inputs are not counted.
Timings are the median of --repeats further forward + backward passes.

    python benchmarks/lfq.py --tokens 2048 --repeats 2   # naive peak ~12 GiB, ~3 min on 2 cores
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.lfq import lfq_entropy  # noqa: E402

BITS, GROUP_SIZE, TEMPERATURE = 18, 9, 0.01


def naive_entropy(z: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Straightforward version: softmax over all 2^bits codes from explicit distances."""
    bits = z.shape[-1]
    indices = torch.arange(2**bits)
    codes = ((indices[:, None] >> torch.arange(bits)) & 1).float() * 2 - 1  # [K, bits]
    distances = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ codes.t() + bits).clamp_min(0)  # [N, K]
    log_probs = (-distances / temperature).log_softmax(-1)
    probs = log_probs.exp()
    per_token = -(probs * log_probs).sum(-1).mean()
    avg_probs = probs.mean(0)  # [K]
    codebook = -(avg_probs * avg_probs.clamp_min(1e-10).log()).sum()
    return per_token, codebook


def factorised_entropy(z: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    return lfq_entropy(z, temperature, GROUP_SIZE)


VARIANTS = {"factorised": factorised_entropy, "naive": naive_entropy}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current VmRSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def run_variant(name: str, tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    z = torch.randn(tokens, BITS) * 0.02  # near the decision boundaries: non-trivial entropies
    entropy_fn = VARIANTS[name]

    def step() -> tuple[Tensor, Tensor]:
        z_leaf = z.clone().requires_grad_(True)
        per_token, codebook = entropy_fn(z_leaf, TEMPERATURE)
        (per_token - codebook).backward()
        return per_token.detach(), codebook.detach()

    if _reset_peak():
        base_kib = _status_kib("VmRSS")
        per_token, codebook = step()
        peak_kib = _status_kib("VmHWM") - base_kib
    else:
        base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        per_token, codebook = step()
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "variant": name,
        "time_s": statistics.median(times),
        "peak_mib": peak_kib / 1024,
        "per_token_entropy": per_token.item(),
        "codebook_entropy": codebook.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens (naive: ~6 MiB each)")
    parser.add_argument("--repeats", type=int, default=2, help="timed forward+backward passes")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:  # worker mode: one variant in this fresh process, JSON on stdout
        print(json.dumps(run_variant(args.variant, args.tokens, args.repeats)))
        return

    results = {}
    for name in ("factorised", "naive"):
        command = [sys.executable, __file__, "--variant", name]
        command += ["--tokens", str(args.tokens), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])

    fact, naive = results["factorised"], results["naive"]
    print(
        f"LFQ entropy loss, K = 2^{BITS}, group size {GROUP_SIZE}, {args.tokens} tokens, "
        f"forward + backward, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'':22}{'factorised':>14}{'naive':>14}{'naive / fact.':>16}")
    rows = [("time (s)", "time_s", ".4f"), ("peak memory (MiB)", "peak_mib", ".1f")]
    for label, key, fmt in rows:
        ratio = naive[key] / max(fact[key], 1e-9)
        print(f"{label:22}{fact[key]:>14{fmt}}{naive[key]:>14{fmt}}{ratio:>15.1f}x")
    for key in ("per_token_entropy", "codebook_entropy"):
        print(f"{key + ' (nats)':22}{fact[key]:>14.4f}{naive[key]:>14.4f}")
    print(
        "per-token entropy is exact in both; the factorised codebook entropy is the sum of the "
        f"{BITS // GROUP_SIZE} group marginal entropies (>= the joint entropy)"
    )


if __name__ == "__main__":
    main()
