"""`magvit`: the project's command line. Each command is one pipeline step."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from magvit.errors import UsageError, UserInputError

# command -> (module whose main() runs it, one-line help)
COMMANDS = {
    "corpus": (
        "stages.corpus",
        "materialise data/raw/ and its manifest (embedded corpus or corpus.source)",
    ),
    "decode": ("stages.decode", "decode the manifest's videos and images into Parquet clip shards"),
    "validate-clips": (
        "stages.validate_clips",
        "run the Great Expectations suite over the clip shards",
    ),
    "train-tokenizer": (
        "stages.train_tokenizer",
        "train the tokenizer on Ray Train (a killed run resumes), record it in MLflow",
    ),
    "train-mlm": (
        "stages.train_mlm",
        "train the masked token model on token shards (Ray Train, MLflow), write samples",
    ),
    "train-domain-classifier": (
        "stages.train_domain_classifier",
        "train the small 3D CNN whose features give fvd_domain / fid_domain",
    ),
    "evaluate": (
        "stages.evaluate",
        "reconstruction, compression (vs H.264 / HEVC) and generation metrics, to DVC + MLflow",
    ),
    "generate": (
        "magvit.commands.generate",
        "generate videos: class-conditional or frame prediction, to GIF or MP4",
    ),
    "tokenize-clips": (
        "stages.tokenize_clips",
        "tokenize the clip shards into token shards with a Ray actor pool (DVC stage)",
    ),
    "validate-tokens": (
        "stages.validate_tokens",
        "run the Great Expectations suite over the token shards",
    ),
    "tokenize": (
        "magvit.commands.bulk_tokenize",
        "bulk, resumable tokenisation of a folder of videos, images or clip shards",
    ),
    "detokenize": ("magvit.commands.detokenize", "decode token shards back into MP4 / PNG files"),
}


# what a command's input paths must be, as require_path's messages say
CLIP_FOLDER = "a clip shard folder, <split>/part-*.parquet, as `magvit decode` writes"
TOKEN_FOLDER = "a token shard folder with manifest.json, as `magvit tokenize-clips` writes"
MODEL_FOLDER = "a model folder with config.json and model.safetensors"
MANIFEST_CSV = "a corpus manifest CSV with a 'path' column, as `magvit corpus` writes"


def require_path(name: str, path: Path, expected: str, folder: bool = True) -> Path:
    """`path`, checked before any work: UsageError `<name> <path> does not exist (expected
    <expected>)` when it is missing, or not a folder (`folder`) or not a file."""
    if path.is_dir() if folder else path.is_file():
        return path
    kind = "a folder" if folder else "a file"
    problem = f"is not {kind}" if path.exists() else "does not exist"
    raise UsageError(f"{name} {path} {problem} (expected {expected})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magvit",
        description="MAGVIT-v2 pipeline commands. Each reads params.yaml (see --params) and "
        "writes the outputs that dvc.yaml declares; `dvc repro` runs them in order.",
        epilog="Run `magvit COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def exit_on(error: UserInputError, prog: str) -> NoReturn:
    """`prog: message` on one line of stderr, then exit with the error's status."""
    message = " ".join(str(error).splitlines())
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(error.exit_code) from None


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a command's main(); a params, validation or argument error ends it with one line,
    no traceback."""
    try:
        main(argv)
    except UserInputError as error:
        exit_on(error, Path(sys.argv[0]).stem)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])  # prints help, or the error for an unknown command
        return
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = [f"magvit {argv[0]}", *argv[1:]]  # so the command's --help names itself
    try:
        module.main(argv[1:])
    except UserInputError as error:
        exit_on(error, f"magvit {argv[0]}")


if __name__ == "__main__":
    main()
