"""Real media files for tests: H.264 MP4s, AAC audio, PNGs and broken files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from magvit.media.video_encode import write_mp4


def index_video(path: Path, num_frames: int, fps: float, height: int = 64, width: int = 64) -> Path:
    """A video whose frame i is a flat grey of level 8 * i: the frame index survives H.264."""
    levels = (8 * np.arange(num_frames)) % 256
    frames = np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3))
    write_mp4(np.ascontiguousarray(frames, dtype=np.uint8), path, fps)
    return path


def textured_video(path: Path, num_frames: int = 24, fps: float = 24, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (num_frames, size, size, 3), dtype=np.uint8)
    write_mp4(frames, path, fps)
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def truncated_copy(source: Path, path: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
