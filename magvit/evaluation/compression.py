"""Compression evaluation (paper Table 3): the token stream as a video codec vs H.264 / HEVC.

Bits per pixel (bpp) count pixels as T x H x W per clip; the 3 colour channels are not
counted separately. The tokens cost `bits` each raw, or less after the lossless coder
`encode_tokens`. The baselines are libx264 and libx265 through PyAV, in memory, yuv420p,
at a constant rate factor (CRF) chosen to match a target bpp.
"""

from __future__ import annotations

import functools
import lzma
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from magvit.media.fixed_heap_fill import fixed_heap_fill
from models.recon_metrics import ms_ssim, psnr

# --- token stream ---------------------------------------------------------------------------

MAX_TOKEN_BITS = 32


def token_bits_per_pixel(num_tokens: int, bits: int, num_pixels: int) -> float:
    """Raw token bpp: bits x tokens / pixels, pixels = T x H x W (channels not counted)."""
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
    return num_tokens * bits / num_pixels


def encode_tokens(tokens: np.ndarray, bits: int) -> bytes:
    """Lossless code of a token array (flattened, values in [0, 2^bits)).

    The tokens are packed with `bits` bits each, bit plane by bit plane (the top bit of every
    token, then the next bit, ...), so unused high bits of a skewed stream form long zero
    runs; the packed bytes are compressed with LZMA2 (preset 9 | extreme, no literal
    context, as a raw stream without the .xz container, whose ~60 bytes would dominate a
    clip's few hundred). Incompressible input costs raw + ~0.2 %.
    """
    values = _checked_tokens(tokens, bits)
    packed = _pack_bit_planes(values, bits)
    return lzma.compress(packed, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(packed)))


def decode_tokens(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `encode_tokens`: int64 [count] tokens (reshape to the grid yourself)."""
    _check_bits(bits)
    size = _packed_size(count, bits)
    packed = lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(size))
    if len(packed) != size:
        raise ValueError(f"expected {size} packed bytes ({count} x {bits} bits), got {len(packed)}")
    return _unpack_bit_planes(packed, bits, count)


def empirical_entropy_bits(tokens: np.ndarray) -> float:
    """Zeroth-order empirical entropy x count, in bits: what an ideal static arithmetic coder
    knowing the stream's own symbol frequencies would need, not counting sending those
    frequencies. A reference bound for memoryless coders only: it is optimistic for short
    streams (most symbols seen once), and coders using context (LZMA) can go below it.
    """
    _, counts = np.unique(np.asarray(tokens).ravel(), return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_TOKEN_BITS:
        raise ValueError(f"bits must be in [1, {MAX_TOKEN_BITS}], got {bits}")


def _checked_tokens(tokens: np.ndarray, bits: int) -> np.ndarray:
    _check_bits(bits)
    values = np.asarray(tokens).ravel()
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= 2**bits):
        raise ValueError(f"tokens must lie in [0, 2^{bits}), got [{values.min()}, {values.max()}]")
    return values.astype(np.uint64)


def _plane_shifts(bits: int) -> np.ndarray:
    """Bit positions, most significant first, as a column for broadcasting over tokens."""
    return np.arange(bits - 1, -1, -1, dtype=np.uint64)[:, None]


def _pack_bit_planes(values: np.ndarray, bits: int) -> bytes:
    planes = ((values[None, :] >> _plane_shifts(bits)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(planes.ravel()).tobytes()


def _unpack_bit_planes(packed: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=bits * count)
    planes = flat.reshape(bits, count).astype(np.uint64)
    return (planes << _plane_shifts(bits)).sum(axis=0).astype(np.int64)


def _packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def _lzma_filters(packed_size: int) -> list[dict]:
    """LZMA2 at preset 9 | extreme with lc = lp = pb = 0 (the packed bits are not byte
    aligned symbols) and a dictionary the size of the data: all that preset 9's 64 MiB one
    could use here, and ~30x faster to set up for a clip's few hundred bytes."""
    return [
        {
            "id": lzma.FILTER_LZMA2,
            "preset": 9 | lzma.PRESET_EXTREME,
            "dict_size": max(packed_size, 4096),  # 4 KiB: liblzma's minimum
            "lc": 0,
            "lp": 0,
            "pb": 0,
        }
    ]


# --- codec baselines ------------------------------------------------------------------------

FPS = 8.0  # params.yaml decode.fps. It matters: x264/x265 rate control weighs frames by duration


@dataclass(frozen=True)
class CodecSpec:
    """A PyAV encoder/decoder pair, its CRF range and how to read a NAL unit's type."""

    encoder: str
    decoder: str
    crf_range: tuple[int, int]
    options: dict[str, str]
    nal_type: Callable[[int], int]
    sei_types: frozenset[int]


CODECS = {
    "h264": CodecSpec(
        encoder="libx264",
        decoder="h264",
        crf_range=(0, 51),
        options={"preset": "medium", "threads": "1"},
        nal_type=lambda header: header & 0x1F,
        sei_types=frozenset({6}),
    ),
    "hevc": CodecSpec(
        encoder="libx265",
        decoder="hevc",
        crf_range=(0, 51),
        options={
            "preset": "medium",
            "x265-params": "log-level=error:pools=none:frame-threads=1",
        },
        nal_type=lambda header: (header >> 1) & 0x3F,
        sei_types=frozenset({39, 40}),
    ),
}


@dataclass(frozen=True)
class CodecResult:
    """One clip through one codec at one CRF; `decoded` is uint8 [T, H, W, 3]."""

    codec: str
    crf: int
    bits: int
    bpp: float
    psnr: float
    ms_ssim: float
    decoded: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class RatePoint:
    """A codec at one CRF over a set of clips: mean bpp, PSNR (dB) and MS-SSIM per clip."""

    codec: str
    crf: int
    bpp: float
    psnr: float
    ms_ssim: float


def codec_spec(codec: str) -> CodecSpec:
    """The spec of "h264" or "hevc"."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    return CODECS[codec]


def encode_with_codec(clip: np.ndarray, codec: str, crf: int, *, fps: float = FPS) -> CodecResult:
    """Encode a uint8 [T, H, W, 3] clip (H, W even) at `crf`, decode it, and measure it.

    The size is the elementary bitstream: the packets' bytes with their SEI NAL units removed
    (x264 and x265 write their version and full option string there, 0.7-2.5 KB per clip,
    which no decoder needs and which would outweigh a small clip's pictures); the quality is
    measured on that same stripped stream. Repeatable: see `_encode_packets`.
    """
    packets = _bitstream(clip, codec, crf, fps)
    decoded = _decode_packets(packets, codec_spec(codec), clip.shape)
    bits = 8 * sum(len(packet) for packet in packets)
    return CodecResult(
        codec=codec,
        crf=crf,
        bits=bits,
        bpp=bits / _pixels(clip),
        psnr=psnr(clip, decoded),
        ms_ssim=ms_ssim(clip, decoded),
        decoded=decoded,
    )


def rate_point(clips: Sequence[np.ndarray], codec: str, crf: int, *, fps: float = FPS) -> RatePoint:
    """`codec` at `crf` over `clips`: bpp, PSNR and MS-SSIM each averaged over clips."""
    if not clips:
        raise ValueError("no clips")
    results = [encode_with_codec(clip, codec, crf, fps=fps) for clip in clips]
    return RatePoint(
        codec=codec,
        crf=crf,
        bpp=float(np.mean([result.bpp for result in results])),
        psnr=float(np.mean([result.psnr for result in results])),
        ms_ssim=float(np.mean([result.ms_ssim for result in results])),
    )


def rate_distortion_curve(
    clips: Sequence[np.ndarray], codec: str, crfs: Sequence[int], *, fps: float = FPS
) -> list[RatePoint]:
    """One `RatePoint` per CRF: the rows of the rate-distortion plot."""
    return [rate_point(clips, codec, crf, fps=fps) for crf in crfs]


def codec_at_bpp(
    clips: Sequence[np.ndarray], codec: str, target_bpp: float, *, fps: float = FPS
) -> RatePoint:
    """The integer CRF whose mean bpp over `clips` is closest to `target_bpp`.

    Bisection over the codec's CRF range (bpp falls as CRF rises), then steps to a
    neighbouring CRF while that is closer, as small clips' bpp is not strictly monotone.
    A target outside the codec's range gives the end of the range. The search only encodes;
    the chosen CRF is then decoded and measured.
    """
    if not clips:
        raise ValueError("no clips")
    first, last = codec_spec(codec).crf_range
    mean_bpp = functools.cache(
        lambda crf: float(np.mean([_bitstream_bpp(clip, codec, crf, fps) for clip in clips]))
    )

    def distance(crf: int) -> float:
        return abs(mean_bpp(crf) - target_bpp)

    low, high = first, last
    while high - low > 1:
        middle = (low + high) // 2
        if mean_bpp(middle) > target_bpp:
            low = middle
        else:
            high = middle
    best = min(low, high, key=distance)
    while True:
        neighbours = [crf for crf in (best - 1, best + 1) if first <= crf <= last]
        closer = [crf for crf in neighbours if distance(crf) < distance(best)]
        if not closer:
            return rate_point(clips, codec, best, fps=fps)
        best = min(closer, key=distance)


def _bitstream(clip: np.ndarray, codec: str, crf: int, fps: float) -> list[bytes]:
    """The clip's non-empty packets at `crf`, without SEI NAL units."""
    _check_clip(clip)
    spec = codec_spec(codec)
    low, high = spec.crf_range
    if not low <= crf <= high:
        raise ValueError(f"{codec} CRF must be in [{low}, {high}], got {crf}")
    packets = [_without_sei(packet, spec) for packet in _encode_packets(clip, spec, crf, fps)]
    return [packet for packet in packets if packet]


def _bitstream_bpp(clip: np.ndarray, codec: str, crf: int, fps: float) -> float:
    return 8 * sum(len(packet) for packet in _bitstream(clip, codec, crf, fps)) / _pixels(clip)


def _check_clip(clip: np.ndarray) -> None:
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [T, H, W, 3] clip, got {clip.dtype} {clip.shape}")
    if clip.shape[1] % 2 or clip.shape[2] % 2:
        raise ValueError(f"yuv420p needs an even height and width, got {clip.shape[1:3]}")


def _pixels(clip: np.ndarray) -> int:
    return clip.shape[0] * clip.shape[1] * clip.shape[2]


def _encode_packets(clip: np.ndarray, spec: CodecSpec, crf: int, fps: float) -> list[bytes]:
    """All of the clip's packets, flushed, from a single-threaded encoder.

    The encoder runs inside `fixed_heap_fill`, so the same clip gives the same stream.
    """
    with fixed_heap_fill():
        encoder = av.CodecContext.create(spec.encoder, "w")
        encoder.width, encoder.height = clip.shape[2], clip.shape[1]
        encoder.pix_fmt = "yuv420p"
        encoder.framerate = Fraction(fps).limit_denominator(1001)
        encoder.time_base = 1 / encoder.framerate
        encoder.options = {**spec.options, "crf": str(crf)}
        packets = []
        for index, array in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            packets += encoder.encode(frame)
        packets += encoder.encode(None)  # flush the delayed (B-)frames
        return [bytes(packet) for packet in packets]


def _decode_packets(packets: list[bytes], spec: CodecSpec, shape: tuple[int, ...]) -> np.ndarray:
    decoder = av.CodecContext.create(spec.decoder, "r")
    frames = []
    for data in packets:
        frames += decoder.decode(av.Packet(data))
    frames += decoder.decode(None)
    if len(frames) != shape[0]:
        raise RuntimeError(f"{spec.decoder}: decoded {len(frames)} of {shape[0]} frames")
    return np.stack([frame.to_ndarray(format="rgb24") for frame in frames])


_START_CODE = re.compile(b"\x00\x00\x01")


def _without_sei(packet: bytes, spec: CodecSpec) -> bytes:
    """An Annex B packet without its SEI NAL units (each unit keeps the bytes before its
    start code, so 4-byte start codes and the packet's leading bytes survive)."""
    starts = [match.start() for match in _START_CODE.finditer(packet)]
    if not starts:
        raise ValueError(f"{spec.encoder} packet has no Annex B start code")
    bounds = [0, *starts[1:], len(packet)]
    kept = [
        packet[begin:end]
        for start, begin, end in zip(starts, bounds[:-1], bounds[1:], strict=True)
        if spec.nal_type(packet[start + 3]) not in spec.sei_types
    ]
    return b"".join(kept)
