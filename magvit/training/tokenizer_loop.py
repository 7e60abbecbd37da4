"""The tokenizer's training loop, run on every Ray Train worker.

The recipe of the paper and its reproductions: alternating generator and discriminator
steps; the discriminator (and the generator's GAN term) start after `disc_start_step`;
LeCam regularisation; entropy-weight annealing; Adam with warm-up and cosine decay;
gradient clipping; an EMA of the generator (evaluation and export use it); bf16 autocast
where the device supports it; every `image_every`-th step trains on images (T = 1) when the
corpus has them, so one vocabulary serves images and videos.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import ray.train
import ray.train.torch
import torch

from magvit.evaluation.reconstruction import reconstruct_clips
from magvit.params import TrainTokenizerParams
from magvit.training.clip_batches import augment, to_model_input, video_grid
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
from models.discriminator import Discriminator3d, DiscriminatorConfig
from models.ema import EMA
from models.lfq import entropy_weight_at
from models.losses import (
    LeCamEMA,
    build_perceptual_loss,
    hinge_discriminator_loss,
    non_saturating_generator_loss,
    reconstruction_loss,
)
from models.lr_schedule import warmup_cosine_lr
from models.tokenizer import MagvitTokenizer, TokenizerConfig


@dataclass
class Models:
    generator: MagvitTokenizer
    discriminator: Discriminator3d
    ema: EMA
    lecam: LeCamEMA
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    def state(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "ema": self.ema.shadow.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "lecam": self.lecam.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.ema.shadow.load_state_dict(state["ema"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.lecam.load_state_dict(state["lecam"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


def build_models(model_config: TokenizerConfig, p: TrainTokenizerParams, device) -> Models:
    generator = MagvitTokenizer(model_config).to(device)
    discriminator = Discriminator3d(
        DiscriminatorConfig(channels=p.disc_channels, channel_multipliers=(2, 4, 4))
    ).to(device)
    return Models(
        generator=generator,
        discriminator=discriminator,
        ema=EMA(generator, p.ema_decay),
        lecam=LeCamEMA(p.lecam_decay).to(device),
        opt_g=torch.optim.Adam(generator.parameters(), lr=p.lr, betas=p.betas),
        opt_d=torch.optim.Adam(discriminator.parameters(), lr=p.lr, betas=p.betas),
    )


def train_loop(config: dict) -> None:
    """Ray Train entry point; `config["loop"]` is the LoopConfig of stages.train_tokenizer
    (shards: `videos` and, when the corpus has them, `images`; data: `val_clips` uint8
    [N, T, H, W, 3])."""
    loop: LoopConfig = config["loop"]
    p: TrainTokenizerParams = loop.train
    worker = start_worker(loop)
    rank, world, device, logger = worker.rank, worker.world, worker.device, worker.logger

    models = build_models(loop.model, p, device)
    perceptual = build_perceptual_loss(p.perceptual_weights)
    if perceptual is not None:
        perceptual = perceptual.to(device)
    step = resume(worker, models.load, p.steps)
    generator = ray.train.torch.prepare_model(models.generator)
    discriminator = ray.train.torch.prepare_model(models.discriminator)

    seed = loop.seed + 1000 * rank
    arrays = worker_arrays(loop, rank)  # uint8 videos [N, T, H, W, 3], images [M, 1, H, W, 3]
    has_images = "images" in arrays and p.image_every > 0
    image_steps_done = step // p.image_every if has_images else 0  # steps s % k == k - 1
    videos = (
        arrays["videos"][index]
        for index in endless_batches(
            len(arrays["videos"]), p.batch_size, seed, skip=step - image_steps_done
        )
    )
    images = None
    if has_images:
        images = (
            arrays["images"][index]
            for index in endless_batches(
                len(arrays["images"]), p.image_batch_size, seed, drop_last=False,
                skip=image_steps_done,
            )
        )  # fmt: skip
    bf16 = use_bf16(p.bf16, device)
    val_clips = loop.data["val_clips"]

    if step == 0 and rank == 0:
        logger.metrics(_eval_metrics(models.ema.shadow, val_clips, device, logger, 0), 0)
    window = _Window()
    while step < p.steps:
        image_step = images is not None and step % p.image_every == p.image_every - 1
        frames = next(images if image_step else videos)
        if p.augment:
            rng = np.random.default_rng(step_seed(seed, step))  # the same draws on resume
            frames = augment(frames, rng, p.augment_max_zoom, p.augment_colour_orders)
        x = to_model_input(frames, device)
        losses, loss_g, grad_norm, quantized = train_step(
            models, generator, discriminator, x, step, p, perceptual, bf16
        )
        step += 1
        window.add(losses, loss_g, grad_norm, clips=len(x) * world)
        if due(step, p.log_every, p.steps):
            extra = {
                "lr": warmup_cosine_lr(step - 1, p.lr, p.warmup_steps, p.steps, p.min_lr_ratio),
                "entropy_weight": entropy_weight_at(
                    step - 1, p.entropy_weight, p.entropy_start_multiplier, p.entropy_decay_steps
                ),
                "per_token_entropy": float(quantized.losses["per_token_entropy"].detach()),
                "codebook_entropy": float(quantized.losses["codebook_entropy"].detach()),
            }
            logger.metrics({**window.summary(), **extra}, step)
            window = _Window()
        if rank == 0 and due(step, p.eval_every, p.steps):
            log_images = due(step, p.image_log_every, p.steps)
            metrics = _eval_metrics(models.ema.shadow, val_clips, device, logger, step, log_images)
            logger.metrics(metrics, step)
        if due(step, p.checkpoint_every, p.steps):
            state = checkpoint_state(step, loop, **models.state()) if rank == 0 else None
            report_step({"step": step, "loss_g": float(loss_g.detach())}, state)


def train_step(
    models: Models,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    x: torch.Tensor,
    step: int,
    p: TrainTokenizerParams,
    perceptual: torch.nn.Module | None = None,
    bf16: bool = False,
):
    """One generator step and (from `disc_start_step`) one discriminator step on x [B, 3, T,
    H, W]. `generator` / `discriminator` are the (DDP-wrapped) modules of `models`.
    Returns (losses, weighted generator loss, generator grad norm, quantiser output)."""
    lr = warmup_cosine_lr(step, p.lr, p.warmup_steps, p.steps, p.min_lr_ratio)
    for optimizer in (models.opt_g, models.opt_d):
        for group in optimizer.param_groups:
            group["lr"] = lr
    entropy_weight = entropy_weight_at(
        step, p.entropy_weight, p.entropy_start_multiplier, p.entropy_decay_steps
    )
    gan_on = step >= p.disc_start_step and p.gan_weight > 0
    # generator step
    with autocast(bf16, x.device):
        recon, quantized = generator(x)
        losses = {
            "recon": reconstruction_loss(recon.float(), x, p.recon_loss),
            "commitment": quantized.losses["commitment"],
            "entropy": quantized.losses["entropy"],
        }
        if perceptual is not None:
            losses["perceptual"] = perceptual(recon.float(), x)
        if gan_on:
            models.discriminator.requires_grad_(False)
            losses["g_adv"] = non_saturating_generator_loss(models.discriminator(recon))
            models.discriminator.requires_grad_(True)
    weights = {
        "recon": p.recon_weight,
        "commitment": 1.0,  # already scaled by the quantiser's commitment_weight
        "entropy": entropy_weight,
        "perceptual": p.perceptual_weight,
        "g_adv": p.gan_weight,
    }
    loss_g = sum(weights[k] * v.float() for k, v in losses.items())
    models.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(models.generator.parameters(), p.grad_clip)
    models.opt_g.step()
    models.ema.update(models.generator)

    # discriminator step: real and fake in one forward (DDP sees each parameter once)
    if gan_on:
        with autocast(bf16, x.device):
            logits = discriminator(torch.cat([x, recon.detach()])).float()
        real, fake = logits.chunk(2)
        losses["d_hinge"] = hinge_discriminator_loss(real, fake)
        losses["d_lecam"] = models.lecam.penalty(real, fake)
        loss_d = losses["d_hinge"] + p.lecam_weight * losses["d_lecam"]
        models.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        torch.nn.utils.clip_grad_norm_(models.discriminator.parameters(), p.grad_clip)
        models.opt_d.step()
        models.lecam.update(real, fake)
    return losses, loss_g, grad_norm, quantized


def _eval_metrics(model, clips, device, logger, step: int, log_images: bool = True) -> dict:
    result = reconstruct_clips(model, clips, device)
    if log_images:
        grid = video_grid(clips, result["recon"])
        logger.image(grid, "reconstructions", step)
    return {f"val/{k}": v for k, v in result.items() if k not in ("recon", "tokens")}


class _Window:
    """Running means of the losses between two log steps, and throughput."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.clips = 0
        self.started = time.perf_counter()

    def add(self, losses: dict, total, grad_norm, clips: int) -> None:
        values = {f"loss/{k}": float(v.detach()) for k, v in losses.items()}
        values |= {"loss/total_g": float(total.detach()), "grad_norm_g": float(grad_norm)}
        for key, value in values.items():  # GAN terms exist only once the discriminator runs
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1
        self.clips += clips

    def summary(self) -> dict:
        seconds = time.perf_counter() - self.started
        means = {k: v / self.counts[k] for k, v in self.sums.items()}
        return means | {"clips_per_s": self.clips / seconds, "s_per_step": seconds / self.steps}
