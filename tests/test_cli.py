"""`magvit`: every command's --help, and a bad input to each ends it with one line naming the
input and what it should be, before anything is written."""

import subprocess

import pytest
import yaml

from magvit.cli import COMMANDS
from magvit.params import parse_params

from conftest import MAGVIT, assert_error_line

# command -> an option its --help must list
HELP_OPTIONS = {
    "corpus": "--out",
    "decode": "--manifest",
    "validate-clips": "--results",
    "train-tokenizer": "--curves",
    "train-mlm": "--tokens",
    "train-domain-classifier": "--clips",
    "evaluate": "--domain-classifier",
    "generate": "--class-id",
    "tokenize-clips": "--tokenizer",
    "validate-tokens": "--docs",
    "tokenize": "--files-per-shard",
    "detokenize": "--batch-size",
}

CLIPS = "(expected a clip shard folder, <split>/part-*.parquet, as `magvit decode` writes)"
TOKENS = "(expected a token shard folder with manifest.json, as `magvit tokenize-clips` writes)"

# (command, arguments, params.yaml, exit status, what the one line must say); run from an
# empty folder holding only that params.yaml
BAD_INPUTS = [
    ("corpus", ["--out", "raw"], {"corpus": {"source": "nope/"}}, 1,
     "corpus.source 'nope/' is not 'embedded', a folder, a glob or a manifest .csv"),
    ("corpus", ["--out", "raw"], {"decode": {"crop_size": 999}}, 1,
     "params.yaml:   decode: crop_size (999) must be <= resize_short_side (72)"),
    ("decode", ["--manifest", "raw.csv", "--out", "clips", "--metrics", "m.json"], {}, 2,
     "--manifest raw.csv does not exist (expected a corpus manifest CSV with a 'path' column"),
    ("validate-clips", ["--clips", "nope", "--results", "r.json", "--docs", "docs"], {}, 2,
     f"--clips nope does not exist {CLIPS}"),
    ("train-tokenizer", ["--clips", "nope", "--out", "tok", "--curves", "curves"], {}, 2,
     f"--clips nope does not exist {CLIPS}"),
    ("train-mlm", ["--tokens", "nope", "--tokenizer", "tok", "--classes", "c.json", "--out",
                   "mlm", "--samples", "s", "--curves", "c"], {}, 2,
     f"--tokens nope does not exist {TOKENS}"),
    ("train-domain-classifier", ["--clips", "nope", "--out", "dc"], {}, 2,
     f"--clips nope does not exist {CLIPS}"),
    ("evaluate", ["--clips", "nope", "--tokenizer", "t", "--mlm", "m", "--domain-classifier",
                  "d", "--classes", "c.json", "--out", "eval"], {}, 2,
     f"--clips nope does not exist {CLIPS}"),
    ("generate", ["--class-id", "0", "--num", "0", "out.gif"], {}, 2,
     "--num 0 must be at least 1"),
    ("tokenize-clips", ["--clips", "nope", "--out", "tokens", "--tokenizer", "t"], {}, 2,
     f"--clips nope does not exist {CLIPS}"),
    ("validate-tokens", ["--tokens", "nope", "--clips", "clips", "--results", "r.json",
                         "--docs", "docs"], {}, 2,
     f"--tokens nope does not exist {TOKENS}"),
    ("tokenize", ["videos", "tokens", "--tokenizer", "tok"], {}, 2,
     "tokenizer checkpoint tok not found: expected config.json and model.safetensors"),
    ("tokenize", ["videos", "tokens", "--tokenizer", "tok", "--files-per-shard", "0"], {}, 1,
     "the command line:   tokenize.files_per_shard: Input should be greater than 0"),
    ("detokenize", ["nope", "out", "--tokenizer", "tok"], {}, 2,
     "TOKENS nope does not exist (expected a token shard folder)"),
]  # fmt: skip


def test_help_lists_every_command():
    out = subprocess.run([MAGVIT, "--help"], capture_output=True, text=True, check=True).stdout
    for command in COMMANDS:
        assert command in out


def test_every_command_has_a_help_and_a_bad_input_test():
    assert set(HELP_OPTIONS) == set(COMMANDS) == {case[0] for case in BAD_INPUTS}


@pytest.mark.parametrize("command", list(HELP_OPTIONS))
def test_command_help_names_the_command_and_its_options(command, magvit_in_process):
    status, out, err = magvit_in_process(command, "--help")
    assert status == 0 and not err
    assert out.startswith(f"usage: magvit {command} ")
    assert HELP_OPTIONS[command] in out and "--help" in out


@pytest.mark.parametrize(
    ("command", "args", "params", "status", "message"),
    BAD_INPUTS,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(BAD_INPUTS)],
)
def test_a_bad_input_is_one_line_naming_it(
    command, args, params, status, message, in_tmp, magvit_in_process
):
    raw = parse_params({}).model_dump(mode="json")
    for section, values in params.items():
        raw[section].update(values)
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    code, _, err = magvit_in_process(command, *args)
    assert code == status
    assert err.count("\n") == 1
    assert_error_line(err, command, message)
    assert [p.name for p in in_tmp.iterdir()] == ["params.yaml"]  # nothing written


def test_unknown_command_is_rejected():
    result = subprocess.run([MAGVIT, "bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'bogus'" in result.stderr
