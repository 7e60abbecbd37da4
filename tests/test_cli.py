import subprocess
import sys
from pathlib import Path

MAGVIT = Path(sys.executable).parent / "magvit"


def test_help_lists_every_command():
    out = subprocess.run([MAGVIT, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("corpus", "decode", "validate-clips", "tokenize-clips", "tokenize"):
        assert command in out


def test_command_help_and_params_errors_are_clean(tmp_path):
    out = subprocess.run([MAGVIT, "decode", "--help"], capture_output=True, text=True, check=True)
    assert "usage: magvit decode" in out.stdout and "--params" in out.stdout
    bad = tmp_path / "params.yaml"
    bad.write_text("decode:\n  crop_size: 999\n")
    result = subprocess.run(
        [MAGVIT, "corpus", "--params", str(bad), "--out", "data/raw"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "decode: Value error" not in result.stderr and "crop_size (999)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_unknown_command_is_rejected():
    result = subprocess.run([MAGVIT, "bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'bogus'" in result.stderr
