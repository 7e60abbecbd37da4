"""The masked token model's training loop, run on every Ray Train worker.

Each batch mixes the two tasks of the paper: class-conditional generation (a cosine-drawn
share of all tokens masked; labels dropped with probability `label_drop` for
classifier-free guidance) and frame prediction (the first `condition_frames` latent frames
are never masked and no label is given). The loss is the sum of the sub-token
cross-entropies on the masked positions.
"""

from __future__ import annotations

import math
import time

import numpy as np
import ray.train
import ray.train.torch
import torch

from magvit.evaluation.baselines import copy_last_condition_frame, copy_neighbour_tokens
from magvit.params import TrainMLMParams
from magvit.training.precision import autocast, use_bf16
from magvit.training.ray_harness import (
    LoopConfig,
    checkpoint_state,
    due,
    endless_batches,
    report_step,
    resume,
    start_worker,
    step_seed,
    worker_arrays,
)
from models.lr_schedule import warmup_cosine_lr
from models.mlm import (
    MaskedTokenTransformer,
    MLMConfig,
    drop_labels,
    mask_tokens,
    masked_token_accuracy,
    masked_token_loss,
)


def to_token_tensors(tokens, labels, no_label_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists and nullable labels -> int64 tensors; a missing label is no_label_id."""
    grid = torch.from_numpy(np.stack([np.asarray(t, dtype=np.int64) for t in tokens]))
    label_values = [no_label_id if lab is None or lab != lab else int(lab) for lab in labels]
    return grid, torch.tensor(label_values, dtype=torch.long)


def mixed_task_batch(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    p: TrainMLMParams,
    condition_tokens: int,
    no_label_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked input, labels, mask): the first rows class-conditional, the rest frame prediction."""
    frame_rows = round(p.frame_prediction_ratio * len(tokens))
    class_rows = len(tokens) - frame_rows
    inputs, masks, task_labels = [], [], []
    if class_rows:
        masked, mask = mask_tokens(tokens[:class_rows], generator)
        inputs.append(masked)
        masks.append(mask)
        task_labels.append(drop_labels(labels[:class_rows], no_label_id, p.label_drop, generator))
    if frame_rows:
        masked, mask = mask_tokens(tokens[class_rows:], generator, condition_tokens)
        inputs.append(masked)
        masks.append(mask)
        task_labels.append(torch.full((frame_rows,), no_label_id, dtype=torch.long))
    return torch.cat(inputs), torch.cat(task_labels), torch.cat(masks)


MASKED_FRACTIONS = (0.1, 0.5, 0.9)  # held-out masking fractions reported beside the baseline


def wrong_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator):
    """Each real label replaced by another class drawn uniformly; no-label rows kept."""
    shift = torch.randint(1, max(2, num_classes), labels.shape, generator=generator)
    shifted = (labels + shift.to(labels.device)) % max(1, num_classes)
    return torch.where(labels < num_classes, shifted, labels)


@torch.no_grad()
def masked_token_metrics(
    model: MaskedTokenTransformer,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    condition_tokens: int,
    seed: int,
) -> dict[str, float]:
    """Held-out masked-token loss and accuracy with fixed masking draws, beside baselines:
    - class task: a cosine-drawn mask (the training objective), and masks of each of
      MASKED_FRACTIONS beside copy_neighbour_tokens;
    - the label's effect: loss at half masked with the true label, no label, a wrong label;
    - frame prediction: every token after the condition masked, beside copying the last
      condition frame forward."""
    model.eval()
    cfg = model.config
    generator = torch.Generator(tokens.device).manual_seed(seed)
    no_label = torch.full_like(labels, model.no_label_id)

    def scores(masked, mask, task_labels, prefix: str, baseline=None) -> dict[str, float]:
        logits = model(masked, task_labels)
        out = {
            f"val/{prefix}_loss": float(masked_token_loss(logits, tokens, mask)),
            f"val/{prefix}_accuracy": float(masked_token_accuracy(logits, tokens, mask)),
        }
        if baseline is not None:
            out[f"val/{prefix}_copy_accuracy"] = float((baseline == tokens)[mask].float().mean())
        return out

    results = scores(*mask_tokens(tokens, generator), labels, "class")
    for fraction in MASKED_FRACTIONS:
        ratio = torch.full((len(tokens),), 2 / math.pi * math.acos(fraction))
        masked, mask = mask_tokens(tokens, generator, ratios=ratio.to(tokens.device))
        copied = copy_neighbour_tokens(tokens, mask, cfg.grid)
        results |= scores(masked, mask, labels, f"masked_{round(100 * fraction)}", copied)
        if fraction == 0.5:
            wrong = wrong_labels(labels, cfg.num_classes, generator)
            for name, given in (("true", labels), ("none", no_label), ("wrong", wrong)):
                loss = masked_token_loss(model(masked, given), tokens, mask)
                results[f"val/label_loss_{name}"] = float(loss)
    zero = torch.zeros(len(tokens), device=tokens.device)  # ratio 0: all maskable masked
    masked, mask = mask_tokens(tokens, generator, condition_tokens, ratios=zero)
    frames = condition_tokens // (cfg.grid[1] * cfg.grid[2])
    copied = copy_last_condition_frame(tokens, frames, cfg.grid)
    results |= scores(masked, mask, no_label, "frame_prediction", copied)
    model.train()
    return results


def train_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    lr: float,
    grad_clip: float,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on batch (masked input [B, N], labels [B], targets [B, N], mask
    [B, N]); the forward under bf16 autocast when `bf16`, the loss in float32.
    `network` is the (DDP-wrapped) model. Returns (loss, logits)."""
    inputs, labels, targets, mask = batch
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(bf16, inputs.device):
        logits = network(inputs, labels)
    loss = masked_token_loss(logits, targets, mask)  # float32: it upcasts the logits
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
    optimizer.step()
    return loss, logits


def train_loop(config: dict) -> None:
    """Ray Train entry point; `config["loop"]` is the LoopConfig of stages.train_mlm
    (data: `val`, the validation token grids and labels as numpy arrays)."""
    loop: LoopConfig = config["loop"]
    p: TrainMLMParams = loop.train
    model_config: MLMConfig = loop.model
    worker = start_worker(loop)
    rank, world, device, logger = worker.rank, worker.world, worker.device, worker.logger

    model = MaskedTokenTransformer(model_config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=p.lr, betas=p.betas, weight_decay=p.weight_decay
    )

    def load(state: dict) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    step = resume(worker, load, p.steps)
    network = ray.train.torch.prepare_model(model)
    bf16 = use_bf16(p.bf16, device)

    no_label = model.no_label_id
    condition_tokens = p.condition_frames * model_config.grid[1] * model_config.grid[2]
    generator = torch.Generator()
    arrays = worker_arrays(loop, rank)  # int64 tokens [N, t*h*w], labels [N] (no_label: none)
    batches = (
        (torch.from_numpy(arrays["tokens"][index]), torch.from_numpy(arrays["labels"][index]))
        for index in endless_batches(
            len(arrays["tokens"]), p.batch_size, loop.seed + rank, skip=step
        )
    )
    # copies: arrays from Ray's object store are read-only, which torch warns about
    val_tokens, val_labels = (torch.tensor(v, device=device) for v in loop.data["val"])
    started, window = time.perf_counter(), []
    while step < p.steps:
        tokens, labels = next(batches)
        generator.manual_seed(step_seed(loop.seed, rank, step))  # as uninterrupted on resume
        inputs, task_labels, mask = mixed_task_batch(
            tokens, labels, p, condition_tokens, no_label, generator
        )
        tokens, inputs, task_labels, mask = (
            t.to(device) for t in (tokens, inputs, task_labels, mask)
        )
        lr = warmup_cosine_lr(step, p.lr, p.warmup_steps, p.steps, p.min_lr_ratio)
        loss, logits = train_step(
            network, optimizer, (inputs, task_labels, tokens, mask), lr, p.grad_clip, bf16
        )
        step += 1
        window.append(
            (float(loss.detach()), float(masked_token_accuracy(logits.detach(), tokens, mask)))
        )

        if due(step, p.log_every, p.steps):
            seconds = time.perf_counter() - started
            losses, accuracies = zip(*window, strict=True)
            logger.metrics(
                {
                    "loss/masked_tokens": float(np.mean(losses)),
                    "train/masked_accuracy": float(np.mean(accuracies)),
                    "lr": lr,
                    "tokens_per_s": len(window) * tokens.numel() * world / seconds,
                },
                step,
            )
            started, window = time.perf_counter(), []
        if rank == 0 and due(step, p.eval_every, p.steps):
            logger.metrics(
                masked_token_metrics(model, val_tokens, val_labels, condition_tokens, 0), step
            )
        if due(step, p.checkpoint_every, p.steps):
            saved = checkpoint_state(
                step, loop, model=model.state_dict(), optimizer=optimizer.state_dict()
            )
            report_step({"step": step, "loss": float(loss.detach())}, saved if rank == 0 else None)
