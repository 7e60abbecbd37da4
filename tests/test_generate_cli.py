"""`magvit generate`: its arguments are checked before any model is loaded or sample drawn."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import magvit.commands.generate as generate
from magvit.cli import main as magvit_main
from magvit.params import parse_params
from magvit.sampling import class_samples
from models.maskgit import SamplerConfig
from models.mlm import MaskedTokenTransformer, MLMConfig
from models.tokenizer import MagvitTokenizer, TokenizerConfig

from conftest import MAGVIT
from media import png, textured_video

NUM_CLASSES = 8
DECODE = {"num_frames": 5, "crop_size": 32, "resize_short_side": 32}  # token grid (2, 4, 4)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """params.yaml, a tiny tokenizer and masked model in the default artifacts/ folders, and
    three --condition files: a usable video, one too short for a clip, and not a video."""
    root = tmp_path_factory.mktemp("generate")
    params = parse_params({"decode": DECODE})
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    torch.manual_seed(0)
    config = {**TokenizerConfig.preset("cpu").to_dict(), "channels": 8, "norm_groups": 4}
    tokenizer = MagvitTokenizer(TokenizerConfig.from_dict(config))
    tokenizer.save_pretrained(root / "artifacts" / "tokenizer")
    mlm_config = MLMConfig(
        bits=tokenizer.config.bits, grid=(2, 4, 4), num_classes=NUM_CLASSES, dim=16, depth=1,
        heads=2,
    )  # fmt: skip
    MaskedTokenTransformer(mlm_config).save_pretrained(root / "artifacts" / "mlm")
    textured_video(root / "clip.mp4", num_frames=48, fps=24)  # 16 frames at 8 fps
    textured_video(root / "short.mp4", num_frames=6, fps=24)  # 2 frames at 8 fps
    (root / "broken.mp4").write_bytes(b"this is not a video")
    png(root / "still.png", np.zeros((32, 32, 3), dtype=np.uint8))
    return root


@pytest.fixture
def generate_in(workdir, monkeypatch, magvit_in_process):
    """`magvit generate ARGS` in this process, from `workdir`: (exit status, stderr)."""
    monkeypatch.chdir(workdir)

    def run(*args: str) -> tuple[int, str]:
        status, _, err = magvit_in_process("generate", *args)
        return status, err

    return run


def assert_usage_error(result: tuple[int, str], *expected: str) -> None:
    """Exit status 2 and one line on stderr, from `magvit generate`, holding `expected`."""
    status, err = result
    lines = err.strip().splitlines()
    assert status == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("magvit generate: "), err
    for text in expected:
        assert text in lines[0]


def test_help_names_the_options(magvit_in_process):
    status, out, _ = magvit_in_process("generate", "--help")
    assert status == 0
    assert "usage: magvit generate" in out
    for option in ("--class-id", "--condition", "--num", "--steps", "--guidance"):
        assert option in out


def test_the_last_class_id_samples(workdir, generate_in):
    status, err = generate_in("--class-id", str(NUM_CLASSES - 1), "--num", "2", "--steps", "1",
                              "last.gif")  # fmt: skip
    assert status == 0, err[-2000:]
    with Image.open(workdir / "last.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (2 * 32, 32)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("missing.mp4", "no such file"),
        ("broken.mp4", "unreadable_container"),
        ("short.mp4", "too_short"),
        ("still.png", "too short, 1 frame(s) where a clip needs 5"),
    ],
)
def test_an_unusable_condition_file_is_named(workdir, generate_in, name, problem):
    result = generate_in("--condition", name, "out.mp4")
    assert_usage_error(result, "--condition", name, problem)
    assert not (workdir / "out.mp4").exists()


def test_a_condition_video_is_continued(workdir):
    """The installed `magvit` command, end to end in its own process."""
    result = subprocess.run(
        [MAGVIT, "generate", "--condition", "clip.mp4", "--num", "1", "--steps", "1", "cont.mp4"],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (workdir / "cont.mp4").stat().st_size > 0


@pytest.fixture
def no_models(workdir, monkeypatch):
    """In-process runs from `workdir` that fail the test if a model is loaded."""
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", sys.argv[:])  # magvit.cli.main renames the command

    def refuse(*args):
        raise AssertionError(f"a model was loaded: {args}")

    monkeypatch.setattr(generate, "load_model", refuse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class-id", "8", "x.gif"], "--class-id 8 is out of range; this model has classes 0-7"),
        (
            ["--class-id", "99", "x.gif"],
            "--class-id 99 is out of range; this model has classes 0-7",
        ),
        (
            ["--class-id", "-1", "x.gif"],
            "--class-id -1 is out of range; this model has classes 0-7",
        ),
        (["--class-id", "0", "x.avi"], "output x.avi must end in .gif or .mp4, not '.avi'"),
        (["--class-id", "0", "x"], "output x must end in .gif or .mp4"),
        (["--class-id", "0", "--num", "0", "x.gif"], "--num 0 must be at least 1"),
        (["--class-id", "0", "--steps", "0", "x.gif"], "--steps 0 must be at least 1"),
        (["--class-id", "0", "--guidance", "-0.5", "x.gif"], "--guidance -0.5 must be 0 or more"),
        (["--condition", "missing.mp4", "x.gif"], "--condition missing.mp4: no such file"),
        (["--class-id", "0", "--mlm", "nowhere", "x.gif"], "--mlm nowhere: nowhere/config.json"),
    ],
)
def test_bad_arguments_stop_before_any_model_is_loaded(no_models, capsys, args, message):
    with pytest.raises(SystemExit) as stopped:
        magvit_main(["generate", *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"magvit generate: {message}") and err.count("\n") == 1, err
    assert not list(Path.cwd().glob("x*"))  # no output file


def test_class_samples_takes_only_real_class_ids_or_none(workdir):
    mlm = MaskedTokenTransformer.from_pretrained(workdir / "artifacts" / "mlm").eval()
    tokenizer = MagvitTokenizer.from_pretrained(workdir / "artifacts" / "tokenizer").eval()
    config = SamplerConfig(steps=1)
    for class_id in (NUM_CLASSES, -1):  # NUM_CLASSES is the model's internal "no label" id
        with pytest.raises(ValueError, match=r"class id must lie in \[0, 8\)"):
            class_samples(mlm, tokenizer, class_id, 1, config, seed=0)
    for class_id in (None, NUM_CLASSES - 1):
        assert class_samples(mlm, tokenizer, class_id, 1, config, seed=0).shape == (1, 5, 32, 32, 3)
