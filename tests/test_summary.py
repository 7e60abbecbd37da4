"""`python -m magvit.summary`: headline figures from the metrics files dvc.yaml declares."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from magvit.summary import HEADLINES, every_metric, stage_files, summary

REPO = Path(__file__).resolve().parents[1]


def test_summary_reads_dvc_yaml_paths_and_shows_headlines_and_pictures(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    files = stage_files(tmp_path / "dvc.yaml")
    (mlm_metrics,), mlm_outputs = files["train_mlm"]
    (tmp_path / mlm_metrics).parent.mkdir(parents=True)
    (tmp_path / mlm_metrics).write_text(
        json.dumps({"val_masked_50_accuracy": 0.56, "val_masked_50_copy_accuracy": 0.125})
    )
    (eval_metrics,), eval_outputs = files["evaluate"]
    (tmp_path / eval_metrics).parent.mkdir(parents=True)
    metrics = {"generation": {"class_conditional": {"class_accuracy": 0.40625}}}
    (tmp_path / eval_metrics).write_text(json.dumps(metrics))
    samples = tmp_path / "artifacts" / "eval" / "samples"
    samples.mkdir()
    for name in ("a.png", "b.gif", "notes.txt"):
        (samples / name).write_text("x")
    (tmp_path / "artifacts" / "eval" / "reconstructions.png").write_text("x")

    text = summary(tmp_path)
    lines = text.splitlines()
    assert "masked 50%: accuracy" in text and "0.56" in text and "0.125" in text
    assert any(line.startswith("  samples: class accuracy") and "0.4062" in line for line in lines)
    assert "fvd_domain" not in text  # a figure the file does not hold is left out, not faked
    (decode_metrics,), _ = files["decode"]
    assert f"decode: no metrics yet ({decode_metrics} is missing" in text
    assert "  artifacts/eval/samples/ (2 pictures)" in lines
    assert "  artifacts/eval/reconstructions.png" in lines
    assert "artifacts/mlm/samples" in mlm_outputs and "mlm/samples" not in text  # no folder


def test_all_lists_every_figure_of_each_metrics_file_a_line_each(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    files = stage_files(tmp_path / "dvc.yaml")
    (eval_metrics,), _ = files["evaluate"]
    (tmp_path / eval_metrics).parent.mkdir(parents=True)
    metrics = {"reconstruction": {"synthetic": {"psnr": 21.5234, "clips": 32}}, "bpp": 0.094}
    (tmp_path / eval_metrics).write_text(json.dumps(metrics))

    lines = every_metric(tmp_path).splitlines()
    at = lines.index(eval_metrics)
    assert [line.split() for line in lines[at + 1 : at + 4]] == [
        ["reconstruction.synthetic.psnr", "21.52"],
        ["reconstruction.synthetic.clips", "32"],
        ["bpp", "0.094"],
    ]
    (decode_metrics,), _ = files["decode"]
    assert f"{decode_metrics}: missing (run `dvc repro`)" in lines
    declared = [path for paths, _ in files.values() for path in paths]
    headers = [line for line in lines if not line.startswith("  ")]
    assert [line.split(":")[0] for line in headers] == declared, "each file once, in dvc.yaml order"


def test_every_headline_stage_declares_metrics_in_dvc_yaml():
    files = stage_files(REPO / "dvc.yaml")
    for stage in HEADLINES:
        assert files[stage][0], f"{stage} has no metrics file in dvc.yaml"


def test_summary_runs_as_a_module(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "magvit.summary", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "train_tokenizer: no metrics yet" in result.stdout
