"""Decoding one file into fixed-size clips with PyAV.

Frame-rate resampling picks, for every output time k / fps, the last source frame shown at
that time (exact rational timestamps, so 24 -> 8 fps keeps every third frame). Frames are
resized on the short side and centre-cropped in one single-threaded swscale call plus a
slice, and only the frames that are kept are converted to RGB.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from magvit.formats.corpus_manifest import IMAGE_EXTENSIONS
from magvit.formats.files import input_size, is_uri, read_uri


class RejectedInput(Exception):
    """A file that cannot become clips; `error_type` is a short machine-readable reason."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class ClipSpec:
    fps: float
    resize_short_side: int
    crop_size: int
    num_frames: int
    stride: int
    max_clips: int

    @property
    def max_frames(self) -> int:
        return (self.max_clips - 1) * self.stride + self.num_frames


@dataclass(frozen=True)
class DecodedFile:
    frames: np.ndarray  # uint8 [N, crop, crop, 3], resampled
    fps: float  # 0.0 for a still image
    source_frames: int  # frames decoded from the file
    is_image: bool


def resized_shape(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after scaling the short side to `short_side`, aspect kept."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def to_rgb_crop(frame: av.VideoFrame, short_side: int, crop: int) -> np.ndarray:
    """Resize (AREA) and convert to RGB in one swscale call, then crop the centre.

    swscale runs on this thread only (`threads=1`): PyAV's default, one thread per CPU, starts
    helper threads for every frame, which costs more than it saves on small frames and
    oversubscribes the cores when several files are decoded at once. The pixels are the same.
    """
    width, height = resized_shape(frame.width, frame.height, short_side)
    rgb = frame.to_ndarray(
        format="rgb24", width=width, height=height, interpolation="AREA", threads=1
    )
    top, left = (height - crop) // 2, (width - crop) // 2
    return rgb[top : top + crop, left : left + crop]


def _open(path: Path | str) -> av.container.InputContainer:
    """Open a local path or a URI (read whole through pyarrow's filesystem) with PyAV."""
    size = input_size(path)
    if size is None:
        raise RejectedInput("missing_file", f"{path} does not exist")
    if size == 0:
        raise RejectedInput("empty_file", f"{path} is empty (0 bytes)")
    try:
        return av.open(io.BytesIO(read_uri(str(path))) if is_uri(path) else str(path))
    except av.FFmpegError as error:
        raise RejectedInput("unreadable_container", f"{path}: {error}") from None


def _frame_times(
    frames: Iterable[av.VideoFrame], stream
) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """Yield (time in seconds as Fraction relative to the first frame, frame)."""
    first = None
    for index, frame in enumerate(frames):
        if frame.pts is not None and stream.time_base is not None:
            t = Fraction(frame.pts) * stream.time_base
        else:
            t = Fraction(index) / Fraction(stream.average_rate or 25)
        first = t if first is None else first
        yield t - first, frame


def resample(
    timed_frames: Iterable[tuple[Fraction, av.VideoFrame]],
    fps: Fraction,
    last_duration: Fraction,
    limit: int,
) -> Iterator[tuple[av.VideoFrame, int]]:
    """Yield (source_frame, repeat): each source frame repeated as often as it covers k/fps."""
    k, prev, prev_t = 0, None, None
    for t, frame in timed_frames:
        if prev is not None:
            repeat = 0
            while k < limit and Fraction(k) / fps < t:
                repeat, k = repeat + 1, k + 1
            if repeat:
                yield prev, repeat
            if k >= limit:
                return
        prev, prev_t = frame, t
    if prev is not None:
        repeat = 0
        while k < limit and Fraction(k) / fps < prev_t + last_duration:
            repeat, k = repeat + 1, k + 1
        if repeat:
            yield prev, repeat


def decode_file(path: Path | str, spec: ClipSpec) -> DecodedFile:
    """Decode, resample, resize and crop one video or image (a local path or a URI).
    Raises RejectedInput."""
    is_image = Path(str(path)).suffix.lower() in IMAGE_EXTENSIONS
    container = _open(path)
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise RejectedInput("no_video_stream", f"{path} has no video stream (streams: {kinds})")
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # one core per file: Ray parallelises over files
        rate = Fraction(stream.average_rate or 25)
        limit = 1 if is_image else spec.max_frames
        kept: list[np.ndarray] = []
        decoded = 0

        def counted(frames):
            nonlocal decoded
            for item in frames:
                decoded += 1
                yield item

        try:
            timed = _frame_times(counted(container.decode(stream)), stream)
            for frame, repeat in resample(timed, Fraction(spec.fps), 1 / rate, limit):
                kept.extend([to_rgb_crop(frame, spec.resize_short_side, spec.crop_size)] * repeat)
        except av.FFmpegError as error:
            raise RejectedInput("decode_error", f"{path}: frame {decoded}: {error}") from None
    declared = stream.frames
    if not is_image and declared and decoded < declared and len(kept) < limit:
        raise RejectedInput(
            "truncated",
            f"{path}: decoded {decoded} of the {declared} frames the container declares",
        )
    if not kept:
        raise RejectedInput("no_frames", f"{path}: the video stream holds no decodable frame")
    if not is_image and len(kept) < spec.num_frames:
        raise RejectedInput(
            "too_short",
            f"{path}: {len(kept)} frames at {spec.fps:g} fps, fewer than one clip "
            f"of {spec.num_frames} frames",
        )
    return DecodedFile(np.stack(kept), 0.0 if is_image else spec.fps, decoded, is_image)


def clip_starts(num_frames_total: int, spec: ClipSpec) -> list[int]:
    """Start indices of the clips cut from a resampled stream of `num_frames_total` frames."""
    last = num_frames_total - spec.num_frames
    return list(range(0, last + 1, spec.stride))[: spec.max_clips]
