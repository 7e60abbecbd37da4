import pytest
import yaml

from magvit.params import ParamsError, load_params, parse_params

from conftest import ROOT


def test_repo_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert (params.decode.num_frames - 1) % 4 == 0
    assert params.decode.crop_size <= params.decode.resize_short_side


@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        ({"decode": {"bogus": 1}}, "decode.bogus", "unknown key"),
        ({"decoed": {}}, "decoed", "unknown key"),
        ({"decode": {"fps": "fast"}}, "decode.fps", "number"),
        ({"decode": {"fps": -8}}, "decode.fps", "greater than 0"),
        ({"decode": {"num_frames": 8}}, "decode.num_frames", "1 + 4k"),
        ({"decode": {"resize_short_side": 64, "crop_size": 80}}, "decode", "crop_size (80)"),
        ({"decode": {"workers": 0}}, "decode.workers", "greater than or equal to 1"),
        (
            {"corpus": {"synthetic": {"videos_per_class": 2}}},
            "corpus.synthetic",
            "videos_per_class",
        ),
        ({"corpus": {"images": ["coffee"], "image_test": ["moon"]}}, "corpus", "moon"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
    ],
)
def test_bad_value_names_its_key(raw, key, hint):
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    message = str(error.value)
    assert f"  {key}:" in message
    assert hint in message


def test_every_error_is_listed_at_once():
    with pytest.raises(ParamsError) as error:
        parse_params({"decode": {"fps": 0, "num_frames": 10}})
    assert "decode.fps" in str(error.value) and "decode.num_frames" in str(error.value)


def test_load_params_rejects_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ParamsError, match="mapping"):
        load_params(path)


def test_stage_fails_before_any_work(in_tmp):
    from stages import corpus

    (in_tmp / "params.yaml").write_text(yaml.safe_dump({"decode": {"num_frames": 6}}))
    with pytest.raises(ParamsError, match="decode.num_frames"):
        corpus.run("params.yaml", in_tmp / "data" / "raw")
    assert not (in_tmp / "data").exists()
