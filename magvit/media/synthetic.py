"""Synthetic labelled videos: one shape moving one way on a textured background.

class id = shape_index * len(MOTIONS) + motion_index, so 4 shapes x 2 motions = 8 classes.
Colours, sizes, speeds and start positions vary per video and are drawn from a seeded
generator, so the same seed writes the same pixels (the H.264 bytes may differ across
encoder builds; the decoded content does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("square", "circle", "triangle", "cross")
MOTIONS = ("horizontal", "orbit")
CLASS_NAMES = tuple(f"{shape}_{motion}" for shape in SHAPES for motion in MOTIONS)


@dataclass(frozen=True)
class ShapeVideoSpec:
    label: int
    num_frames: int
    size: int
    seed: int

    @property
    def shape(self) -> str:
        return SHAPES[self.label // len(MOTIONS)]

    @property
    def motion(self) -> str:
        return MOTIONS[self.label % len(MOTIONS)]


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float):
    dy, dx = yy - cy, xx - cx
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "triangle":  # apex up
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":
        arm = r / 3
        return ((np.abs(dy) <= r) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= r) & (np.abs(dy) <= arm))
    raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPES}")


def render_shape_video(spec: ShapeVideoSpec) -> np.ndarray:
    """Return uint8 frames [T, H, W, 3] for one synthetic video."""
    rng = np.random.default_rng(spec.seed)
    n, size = spec.num_frames, spec.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # background: a smooth two-colour gradient, so frames are never constant
    top, bottom = rng.uniform(0, 120, 3), rng.uniform(0, 120, 3)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * yy + np.sin(angle) * xx) / (size * 1.5) + 0.5
    background = top + (bottom - top) * np.clip(ramp, 0, 1)[..., None]

    colour = rng.uniform(140, 255, 3)
    radius = rng.uniform(0.12, 0.2) * size
    margin = radius + 1
    speed = rng.uniform(0.6, 1.2) * size / n * rng.choice([-1, 1])
    phase, start = rng.uniform(0, 2 * np.pi), rng.uniform(margin, size - margin)

    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        if spec.motion == "horizontal":
            span = size - 2 * margin
            x = margin + np.abs(((start - margin + speed * t * 2) % (2 * span)) - span)
            cy, cx = size / 2, span - x + 2 * margin
        else:
            theta = phase + 2 * np.pi * t / n * np.sign(speed)
            orbit = size / 2 - margin
            cy, cx = size / 2 + orbit * np.sin(theta), size / 2 + orbit * np.cos(theta)
        mask = _shape_mask(spec.shape, yy, xx, cy, cx, radius)
        frame = np.where(mask[..., None], colour, background)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames
