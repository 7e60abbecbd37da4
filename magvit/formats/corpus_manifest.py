"""The corpus manifest: which files the pipeline decodes, with label and split.

Columns: path, video_id, label (empty when unlabelled), split (train / val / test).
`video_id` is a stable hash of the path relative to the corpus root, so it survives
moving the corpus as a whole. A relative `path` is relative to the CSV's own folder, in the
manifests users write and in the one the corpus stage writes alike.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from magvit.errors import UserInputError
from magvit.formats.files import atomic_path, is_uri

SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MANIFEST_COLUMNS = ("path", "video_id", "label", "split")


class CorpusError(UserInputError, ValueError):
    """A corpus source or manifest that cannot be used: the message names it and says why."""


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    video_id: str
    label: int | None
    split: str

    @property
    def is_image(self) -> bool:
        return Path(self.path).suffix.lower() in IMAGE_EXTENSIONS


def video_id_for(path: Path | str, root: Path) -> str:
    """Stable id: the first 16 hex digits of sha1 of the path relative to the corpus root
    (of a URI, of the URI)."""
    if is_uri(path):
        return hashlib.sha1(str(path).encode()).hexdigest()[:16]
    path = Path(path)
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = path
    return hashlib.sha1(relative.as_posix().encode()).hexdigest()[:16]


def write_corpus_manifest(
    entries: list[ManifestEntry], path: Path, folder: Path | None = None
) -> None:
    """Write `entries` to the CSV `path`; relative entry paths (relative to the current
    folder) are written relative to the CSV's folder, as read_corpus_manifest reads them,
    or to `folder`: the one the CSV will be read from, when it is written elsewhere first."""
    folder = path.parent if folder is None else folder
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for e in entries:
            kept = is_uri(e.path) or Path(e.path).is_absolute()
            file = e.path if kept else os.path.relpath(e.path, folder)
            writer.writerow([file, e.video_id, "" if e.label is None else e.label, e.split])


def resolve_entry_path(value: str, manifest: Path) -> str:
    """A manifest's `path` cell as a path to open: relative ones join the CSV's folder
    (normalised, so `data/raw/../../videos/a.mp4` reads `videos/a.mp4`); a URI stays."""
    if is_uri(value):
        return value
    file = Path(value)
    return str(file) if file.is_absolute() else os.path.normpath(manifest.parent / file)


def _parse_label(value: str | None, where: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        label = int(value)
    except ValueError:
        raise CorpusError(
            f"{where}: label must be a non-negative integer or empty, got {value!r}"
        ) from None
    if label < 0:
        raise CorpusError(f"{where}: label must be a non-negative integer or empty, got {label}")
    return label


def read_corpus_manifest(path: Path, root: Path | None = None) -> list[ManifestEntry]:
    """Read a manifest CSV. Only `path` is required; relative paths resolve against its folder
    (never the current one).

    Missing video_id is derived from the path, missing split defaults to train.
    """
    root = root or path.parent
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise CorpusError(
                f"{path}: a manifest needs a header row with at least a 'path' column"
            )
        entries = []
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            file = resolve_entry_path(row["path"], path)
            split = (row.get("split") or "train").strip()
            if split not in SPLITS:
                raise CorpusError(f"{where}: split must be one of {SPLITS}, got {split!r}")
            video_id = (row.get("video_id") or "").strip() or video_id_for(file, root)
            entries.append(
                ManifestEntry(file, video_id, _parse_label(row.get("label"), where), split)
            )
    return entries


def entries_from_files(files: list[Path], root: Path) -> list[ManifestEntry]:
    """Unlabelled training entries for media files found in a folder or by a glob."""
    return [ManifestEntry(str(f), video_id_for(f, root), None, "train") for f in files]


def find_media(source: str) -> tuple[list[Path], Path]:
    """Media files under a folder or matching a glob, sorted, and the root they hang from."""
    if any(ch in source for ch in "*?["):
        files = [Path(p) for p in glob.glob(source, recursive=True)]
        root = Path(_glob_root(source))
    else:
        root = Path(source)
        if not root.is_dir():
            raise CorpusError(
                f"corpus.source {source!r} is not 'embedded', a folder, a glob or a manifest .csv"
            )
        files = list(root.rglob("*"))
    media = sorted(
        p for p in files if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    )
    if not media:
        raise CorpusError(f"corpus.source {source!r} matches no video or image files")
    return media, root


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def class_names(classes_json: Path, count: int) -> list[str]:
    """Names of the corpus's classes (the corpus stage's classes.json), `classN` past them."""
    names = json.loads(classes_json.read_text()) if classes_json.is_file() else []
    return [names[i] if i < len(names) else f"class{i}" for i in range(count)]
