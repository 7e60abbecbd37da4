"""Stage `train_domain_classifier`: the domain feature network of the evaluation.

Trains models.domain_classifier on the labelled (synthetic) train clips, in process: the
network is small and trains in about two minutes on two cores, so Ray Train would only add
start-up time. Each step sees whole clips and, from the same clips, one random frame each as
a T = 1 clip, so the features serve both fvd_domain (clips) and fid_domain (frames). Writes
artifacts/domain_classifier/ (config.json, model.safetensors, metrics.json with the held-out
accuracy that makes the class accuracy of generated samples interpretable).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from magvit.cli import CLIP_FOLDER, require_path, run_stage
from magvit.evaluation.domain_features import class_accuracy
from magvit.formats.clip_shards import labelled_clips
from magvit.formats.files import atomic_folder
from magvit.logs import configure_logging
from magvit.params import DomainClassifierParams, load_params
from magvit.training.clip_batches import to_model_input
from models.domain_classifier import DomainClassifier, DomainClassifierConfig
from models.lr_schedule import warmup_cosine_lr

log = logging.getLogger("train_domain_classifier")


def augment(videos: np.ndarray, rng: np.random.Generator, max_shift: int = 8) -> np.ndarray:
    """Label-preserving changes of uint8 clips [B, T, H, W, 3]: mirror left-right, play
    backwards, permute the colour channels, shift by up to `max_shift` pixels. The synthetic
    classes are shape x motion, and every one of these keeps both; without them the network
    memorises the few training videos' colours and backgrounds."""
    out = []
    for video in videos:
        if rng.random() < 0.5:
            video = video[:, :, ::-1]
        if rng.random() < 0.5:
            video = video[::-1]
        video = video[..., rng.permutation(3)]
        shift = rng.integers(-max_shift, max_shift + 1, size=2)
        out.append(np.roll(video, tuple(shift), axis=(1, 2)))
    return np.stack(out)


def train(
    clips: np.ndarray,
    labels: np.ndarray,
    params: DomainClassifierParams,
    num_classes: int,
    seed: int,
) -> DomainClassifier:
    """Cross-entropy on augmented clips and on one random frame of each clip; AdamW with
    warm-up and cosine decay."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = DomainClassifierConfig(num_classes, tuple(params.channels), params.feature_dim)
    model = DomainClassifier(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), params.lr, weight_decay=params.weight_decay)
    warmup = max(1, params.steps // 10)
    for step in tqdm(range(params.steps), desc="domain classifier", mininterval=5):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, params.lr, warmup, params.steps)
        pick = rng.integers(0, len(clips), params.batch_size)
        videos = to_model_input(augment(clips[pick], rng))  # [B, 3, T, H, W]
        frame = int(rng.integers(0, videos.shape[2]))
        target = torch.from_numpy(labels[pick]).long()
        loss = F.cross_entropy(model(videos), target)
        loss = loss + F.cross_entropy(model(videos[:, :, frame : frame + 1]), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def run(params_path: str, clips_dir: Path, out_dir: Path):
    params = load_params(params_path)
    num_classes = params.validate_clips.num_classes
    clips, labels = labelled_clips(clips_dir, ("train",))
    if labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} >= validate_clips.num_classes {num_classes}")
    model = train(clips, labels, params.domain_classifier, num_classes, params.seed)
    metrics = {
        "train_clips": len(clips),
        "train_accuracy": round(class_accuracy(model, clips, labels), 4),
    }
    for split in ("val", "test"):
        held_out, held_out_labels = labelled_clips(clips_dir, (split,))
        metrics[f"{split}_accuracy"] = round(class_accuracy(model, held_out, held_out_labels), 4)
        metrics[f"{split}_clips"] = len(held_out)
    with atomic_folder(out_dir) as building:  # replaces out_dir when complete
        model.save_pretrained(building)
        (building / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("domain classifier -> %s: %s", out_dir, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--clips", required=True, help="clip shard folder")
    parser.add_argument("--out", required=True, help="model directory (replaced when complete)")
    args = parser.parse_args(argv)
    clips = require_path("--clips", Path(args.clips), CLIP_FOLDER)
    configure_logging()
    run(args.params, clips, Path(args.out))


if __name__ == "__main__":
    run_stage(main)
