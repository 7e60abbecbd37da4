"""`python -m magvit.summary`: the pipeline's headline figures, one screen, after `dvc repro`.

Reads each stage's metrics file where dvc.yaml declares it (its only copy of the paths), and
prints per stage the few figures a person checks first, each beside what it is read
against (baselines, floors, the judge's ceiling), then where the pictures are. With `--all`
it lists every figure of every metrics file, a line each: what `dvc metrics show` prints as
one table of ~140 columns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

FRAME_PREDICTION = "generation.frame_prediction"
# stage -> (label, key path in its metrics file) of its headline figures
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "decode": [("clips", "clips"), ("rejected files", "rejects")],
    "train_tokenizer": [
        ("synthetic test PSNR (dB)", "test_synthetic_psnr"),
        ("real test PSNR (dB)", "test_real_psnr"),
        ("synthetic codebook utilisation", "test_synthetic_codebook_utilisation"),
    ],
    "train_mlm": [
        ("masked 50%: accuracy", "val_masked_50_accuracy"),
        ("masked 50%: copy-neighbour baseline", "val_masked_50_copy_accuracy"),
        ("frame prediction: accuracy", "val_frame_prediction_accuracy"),
        ("frame prediction: copy baseline", "val_frame_prediction_copy_accuracy"),
        ("val loss, true label", "val_label_loss_true"),
        ("val loss, wrong label", "val_label_loss_wrong"),
    ],
    "train_domain_classifier": [
        ("val accuracy", "val_accuracy"),
        ("test accuracy", "test_accuracy"),
    ],
    "evaluate": [
        ("synthetic PSNR (dB)", "reconstruction.synthetic.psnr"),
        ("  8x8 block means (dB)", "reconstruction.synthetic.baselines.block_mean_8x8"),
        ("samples: class accuracy", "generation.class_conditional.class_accuracy"),
        ("  on reconstructions", "generation.class_conditional.class_accuracy_reconstructions"),
        ("samples: fvd_domain", "generation.class_conditional.fvd_domain"),
        ("  real floor", "generation.real_floor.fvd_domain"),
        ("frame prediction PSNR (dB)", "generation.frame_prediction.future_psnr"),
        (
            "  last frame held (dB)",
            "generation.frame_prediction.future_psnr_copy_last_condition_frame",
        ),
    ],
}
PICTURE_SUFFIXES = (".png", ".gif")


def stage_files(dvc_yaml: Path) -> dict[str, tuple[list[str], list[str]]]:
    """stage -> (its metrics files, its outputs), as dvc.yaml declares them."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]

    def paths(entries: list) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries]

    return {
        name: (paths(stage.get("metrics", [])), paths(stage.get("outs", [])))
        for name, stage in stages.items()
    }


def lookup(metrics: dict, dotted: str):
    value = metrics
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def stage_lines(name: str, metrics_files: list[str], root: Path) -> list[str]:
    """The headline figures of one stage, or a line saying its metrics are missing."""
    merged: dict = {}
    for path in metrics_files:
        file = root / path
        if not file.is_file():
            return [f"{name}: no metrics yet ({path} is missing; run `dvc repro`)"]
        merged |= json.loads(file.read_text())
    figures = [(label, lookup(merged, key)) for label, key in HEADLINES.get(name, [])]
    shown = [
        f"  {label:<38} {format_value(value)}" for label, value in figures if value is not None
    ]
    return [f"{name} ({', '.join(metrics_files)})", *shown]


def format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pictures(outputs: list[str], root: Path) -> list[str]:
    """Pictures among the outputs: image files, and output folders with how many they hold."""
    found = []
    for path in outputs:
        target = root / path
        if target.is_dir():
            count = sum(p.suffix in PICTURE_SUFFIXES for p in target.iterdir())
            found += [f"{path}/ ({count} pictures)"] if count else []
        elif target.suffix in PICTURE_SUFFIXES and target.is_file():
            found.append(path)
    return found


def flat(metrics: dict, prefix: str = ""):
    """(dotted key, value) of every leaf, as DVC names the columns."""
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def every_metric(root: Path) -> str:
    """Every metrics file dvc.yaml declares, then its figures, one per line."""
    lines = []
    for metrics_files, _ in stage_files(root / "dvc.yaml").values():
        for path in metrics_files:
            if not (root / path).is_file():
                lines.append(f"{path}: missing (run `dvc repro`)")
                continue
            figures = list(flat(json.loads((root / path).read_text())))
            width = max((len(key) for key, _ in figures), default=0)
            lines += [path, *(f"  {key:<{width}}  {format_value(v)}" for key, v in figures)]
    return "\n".join(lines)


def summary(root: Path) -> str:
    files = stage_files(root / "dvc.yaml")
    lines = []
    for name, (metrics_files, _) in files.items():
        if metrics_files:
            lines += stage_lines(name, metrics_files, root)
    images = [p for _, outputs in files.values() for p in pictures(outputs, root)]
    if images:
        lines += ["pictures:", *(f"  {path}" for path in images)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root (default .)")
    parser.add_argument("--all", action="store_true", help="every figure of every metrics file")
    args = parser.parse_args(argv)
    print(every_metric(args.root) if args.all else summary(args.root))


if __name__ == "__main__":
    main()
