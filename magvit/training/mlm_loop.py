"""The masked token model's training loop, run on every Ray Train worker.

Each batch mixes the two tasks of the paper: class-conditional generation (a cosine-drawn
share of all tokens masked; labels dropped with probability `label_drop` for
classifier-free guidance) and frame prediction (the first `condition_frames` latent frames
are never masked and no label is given). The loss is the sum of the sub-token
cross-entropies on the masked positions.
"""

from __future__ import annotations

import time

import numpy as np
import ray.train
import ray.train.torch
import torch

from magvit.params import TrainMLMParams
from magvit.training.ray_harness import (
    LoopConfig,
    checkpoint_state,
    due,
    endless_batches,
    report_step,
    resume,
    start_worker,
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


@torch.no_grad()
def masked_token_metrics(
    model: MaskedTokenTransformer,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    condition_tokens: int,
    seed: int,
) -> dict[str, float]:
    """Masked-token loss / accuracy on held-out grids with a fixed masking draw."""
    model.eval()
    generator = torch.Generator(tokens.device).manual_seed(seed)
    results = {}
    for task, condition in (("class", 0), ("frame_prediction", condition_tokens)):
        masked, mask = mask_tokens(tokens, generator, condition)
        task_labels = labels if task == "class" else torch.full_like(labels, model.no_label_id)
        logits = model(masked, task_labels)
        results[f"val/{task}_loss"] = float(masked_token_loss(logits, tokens, mask))
        results[f"val/{task}_accuracy"] = float(masked_token_accuracy(logits, tokens, mask))
    model.train()
    return results


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

    no_label = model.no_label_id
    condition_tokens = p.condition_frames * model_config.grid[1] * model_config.grid[2]
    generator = torch.Generator().manual_seed(loop.seed + 1000 * rank + step)
    shard = ray.train.get_dataset_shard("tokens")
    batches = (
        to_token_tensors(batch["tokens"], batch["label"], no_label)
        for batch in endless_batches(shard, p.batch_size, loop.seed + rank)
    )
    val_tokens, val_labels = (torch.as_tensor(v).to(device) for v in loop.data["val"])
    started, window = time.perf_counter(), []
    while step < p.steps:
        tokens, labels = next(batches)
        inputs, task_labels, mask = mixed_task_batch(
            tokens, labels, p, condition_tokens, no_label, generator
        )
        tokens, inputs, task_labels, mask = (
            t.to(device) for t in (tokens, inputs, task_labels, mask)
        )
        lr = warmup_cosine_lr(step, p.lr, p.warmup_steps, p.steps, p.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = network(inputs, task_labels)
        loss = masked_token_loss(logits, tokens, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        step += 1
        window.append((float(loss), float(masked_token_accuracy(logits, tokens, mask))))

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
            report_step({"step": step, "loss": float(loss)}, saved if rank == 0 else None)
