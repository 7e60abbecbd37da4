"""Writing uint8 frames [T, H, W, 3] as media files: H.264 MP4 (PyAV), GIF, by suffix.

Each file is written under a temporary name and renamed when complete (atomic_path): a full
disk leaves no partial file, and raises OutputError naming the file."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from magvit.formats.files import atomic_path
from magvit.media.fixed_heap_fill import fixed_heap_fill


def write_mp4(frames: np.ndarray, path: Path, fps: float, faststart: bool = False) -> None:
    """Encode uint8 frames [T, H, W, 3] as an H.264 MP4 with PyAV (H and W must be even).

    `faststart` puts the index (moov atom) before the media data, as streaming files do.
    The same frames give the same bytes (`fixed_heap_fill`).
    """
    from fractions import Fraction

    options = {"movflags": "+faststart"} if faststart else {}
    with (
        atomic_path(path) as tmp,
        fixed_heap_fill(),
        av.open(str(tmp), mode="w", format="mp4", options=options) as container,
    ):
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def write_gif(frames: np.ndarray, path: Path, fps: float = 8.0) -> None:
    """uint8 frames [T, H, W, 3] as a looping GIF."""
    images = [Image.fromarray(frame) for frame in frames]
    duration = int(1000 / fps)
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )


def write_video(frames: np.ndarray, path: Path, fps: float = 8.0) -> None:
    """uint8 frames [T, H, W, 3] as .gif or .mp4 (H.264), by the path's suffix."""
    suffix = path.suffix.lower()
    if suffix == ".gif":
        write_gif(frames, path, fps)
    elif suffix == ".mp4":
        even = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        write_mp4(np.ascontiguousarray(even), path, fps)
    else:
        raise ValueError(f"output {path} must end in .gif or .mp4")
