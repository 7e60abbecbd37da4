"""Build-then-swap of output folders (magvit.formats.files.atomic_folder / atomic_folders):
a failure inside leaves the old folder as it was and no temporary folder beside it; success
replaces the old folder whole."""

import pytest

from magvit.errors import OutputError
from magvit.formats.files import atomic_folder, atomic_folders, atomic_path


def snapshot(folder):
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def old_output(folder):
    (folder / "split").mkdir(parents=True)
    (folder / "split" / "part-00000.parquet").write_bytes(b"old shard")
    (folder / "stale.txt").write_text("from an earlier run")
    return snapshot(folder)


def test_a_failure_inside_leaves_the_old_folder_and_no_temporary_one(tmp_path):
    out = tmp_path / "clips"
    before = old_output(out)
    with pytest.raises(RuntimeError, match="decoding failed"), atomic_folder(out) as building:
        assert building.is_dir() and building.name == "clips" and building != out
        assert not list(building.iterdir())  # a new, empty folder
        (building / "split").mkdir()
        (building / "split" / "part-00000.parquet").write_bytes(b"half a new shard")
        raise RuntimeError("decoding failed")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"]


def test_success_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "clips"
    old_output(out)
    with atomic_folder(out) as building:
        (building / "split").mkdir()
        (building / "split" / "part-00000.parquet").write_bytes(b"new shard")
        assert (out / "stale.txt").is_file()  # the old output stays until the swap
    assert snapshot(out) == {"split/part-00000.parquet": b"new shard"}  # nothing stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"]
    with atomic_folder(tmp_path / "new" / "tokens") as building:  # no old folder, no parent
        (building / "manifest.json").write_text("{}")
    assert snapshot(tmp_path / "new") == {"tokens/manifest.json": b"{}"}


def test_write_errors_inside_name_the_final_path(tmp_path):
    out = tmp_path / "clips"
    before = old_output(out)
    with pytest.raises(OutputError) as raised, atomic_folder(out) as building:
        (building / "train" / "part-00000.parquet").write_bytes(b"")  # no train/ folder
    assert str(raised.value) == (
        f"cannot write {out / 'train' / 'part-00000.parquet'}: No such file or directory"
    )
    with pytest.raises(OutputError) as raised, atomic_folder(out) as building:
        (building / "metrics.json" / "x").mkdir(parents=True)  # a file cannot replace it
        with atomic_path(building / "metrics.json") as tmp:
            tmp.write_text("{}")
    assert str(raised.value) == f"cannot write {out / 'metrics.json'}: Is a directory"
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"]


def test_folders_of_one_command_swap_together_a_nested_one_with_its_parent(tmp_path):
    model, samples, curves = tmp_path / "mlm", tmp_path / "mlm" / "samples", tmp_path / "plots"
    (samples).mkdir(parents=True)
    (samples / "old.gif").write_bytes(b"old")
    (model / "model.safetensors").write_bytes(b"old weights")
    curves.mkdir()
    (curves / "train.csv").write_text("step\n")
    before = snapshot(tmp_path)

    with pytest.raises(KeyboardInterrupt), atomic_folders(model, samples, curves) as built:
        new_model, new_samples, new_curves = built
        assert new_samples == new_model / "samples" and new_samples.is_dir()
        (new_samples / "class_00.gif").write_bytes(b"new")
        raise KeyboardInterrupt  # Ctrl-C: still no trace of the new folders
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlm", "plots"]

    with atomic_folders(model, samples, curves) as (new_model, new_samples, new_curves):
        (new_model / "model.safetensors").write_bytes(b"new weights")
        (new_samples / "class_00.gif").write_bytes(b"new")
        (new_curves / "train.csv").write_text("step\n1\n")
    assert snapshot(tmp_path) == {
        "mlm/model.safetensors": b"new weights",
        "mlm/samples/class_00.gif": b"new",
        "plots/train.csv": b"step\n1\n",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlm", "plots"]
