"""Profiles (params/paper.yaml): DVC's own -S parser applies them exactly, and the paper
profile's models and one batch build on the meta device."""

import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from magvit.params import load_params
from magvit.profile import main, merge, set_param_args

from conftest import ROOT

PAPER = ROOT / "params" / "paper.yaml"


def test_dvc_set_param_applies_the_profile_exactly(tmp_path):
    """The printed `-S` arguments, parsed and applied by DVC's own `--set-param` code, give
    params.yaml with every profile value in place (lists, booleans, floats) and nothing else
    changed, and the result is a valid params file."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = yaml.safe_load(PAPER.read_text())
    printed = subprocess.run(
        [sys.executable, "-m", "magvit.profile", str(PAPER)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    printed = shlex.split(printed)  # as the shell hands them to `dvc exp run`
    assert printed[::2] == ["-S"] * (len(printed) // 2)
    assert printed[1::2] == set_param_args(profile, base)
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, printed[1::2])
    applied = yaml.safe_load(params.read_text())
    assert applied == merge(base, profile)
    assert applied["train_tokenizer"]["betas"] == [0.5, 0.9]
    assert applied["ray"]["train"]["use_gpu"] is True
    assert applied["decode"]["fps"] == base["decode"]["fps"]  # untouched keys kept
    loaded = load_params(params)
    assert loaded.tokenizer.preset == "paper" and loaded.train_mlm.condition_frames == 2


def test_the_paper_profile_builds_on_the_meta_device(capsys):
    main([str(PAPER), "--params", str(ROOT / "params.yaml"), "--check"])
    summary = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert summary["clip"] == "17 x 128 x 128"
    assert summary["tokens"] == "5 x 16 x 16" and summary["vocabulary"] == "2^18"
    assert summary["encoder_output"] == "(8, 18, 5, 16, 16)"  # 8 clips per GPU, 18 LFQ bits
    assert summary["mlm_logits"] == "(32, 1280, 2, 512)"  # 2 sub-tokens of 2^9 (paper)
    assert 290e6 < int(summary["mlm_parameters"]) < 320e6
    assert summary["gpus"] == "8"


def test_a_profile_key_that_params_yaml_lacks_is_named(tmp_path):
    profile = tmp_path / "typo.yaml"
    profile.write_text("train_tokenizer:\n  stpes: 10\n")
    with pytest.raises(SystemExit, match="sets train_tokenizer.stpes, which params.yaml"):
        main([str(profile), "--params", str(ROOT / "params.yaml")])


def test_a_profile_that_gives_bad_params_fails_the_check_naming_the_key(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text("decode:\n  num_frames: 16\n")  # not 1 + 4k
    with pytest.raises(SystemExit, match="num_frames"):
        main([str(profile), "--params", str(ROOT / "params.yaml"), "--check"])
