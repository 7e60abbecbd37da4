"""The evaluate stage and its domain feature network, on tiny models and clip folders."""

import json

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from magvit.errors import UserInputError
from magvit.evaluation.domain_features import class_accuracy, domain_outputs
from magvit.evaluation.feature_nets import FeatureNets, load_feature_nets
from magvit.evaluation.pictures import LABEL_WIDTH
from magvit.media.synthetic import ShapeVideoSpec, render_shape_video
from magvit.params import DomainClassifierParams, EvaluateParams
from models.domain_classifier import DomainClassifier, DomainClassifierConfig
from models.mlm import MaskedTokenTransformer, MLMConfig
from models.recon_metrics import psnr, ssim
from models.tokenizer import MagvitTokenizer, TokenizerConfig
from stages import evaluate, train_domain_classifier

from clip_fixtures import write_clip_folder


def shape_clips(labels, frames=5, size=32, seed=0) -> np.ndarray:
    return np.stack(
        [
            render_shape_video(ShapeVideoSpec(int(c), frames, size, seed + i))
            for i, c in enumerate(labels)
        ]
    )


def test_psnr_and_ssim_agree_with_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-9)
    expected = np.mean(
        [
            structural_similarity(x, y, channel_axis=-1, data_range=255, gaussian_weights=True)
            for x, y in zip(a, b, strict=True)
        ]
    )
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)


def test_domain_classifier_learns_shapes_and_round_trips(tmp_path):
    labels = np.array([0, 6] * 12)  # squares vs crosses, both moving horizontally
    clips = shape_clips(labels)
    params = DomainClassifierParams(channels=(16, 32), feature_dim=16, steps=150, batch_size=8)
    model = train_domain_classifier.train(clips, labels, params, num_classes=8, seed=0)
    held_out = shape_clips([0, 6] * 8, seed=500)
    accuracy = class_accuracy(model, held_out, np.array([0, 6] * 8))
    assert accuracy > 0.6  # one class for all (an untrained net) scores 0.5

    model.save_pretrained(tmp_path / "dc")
    loaded = DomainClassifier.from_pretrained(tmp_path / "dc")
    features, predictions = domain_outputs(loaded, held_out)
    original = domain_outputs(model, held_out)
    np.testing.assert_allclose(features, original[0], rtol=1e-6)
    assert features.shape == (16, 16) and predictions.shape == (16,)
    single_frames = evaluate.as_frames(held_out)  # T = 1 clips for fid_domain
    assert domain_outputs(loaded, single_frames)[0].shape == (80, 16)


def test_domain_metrics_grow_as_noise_is_added():
    torch.manual_seed(0)
    nets = FeatureNets(domain=DomainClassifier(DomainClassifierConfig(8, (8, 16), 16)))
    real = shape_clips(np.arange(32) % 8)
    rng = np.random.default_rng(1)
    distances, psnrs = [], []
    for sigma in (5, 30, 90):
        noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 255).astype(np.uint8)
        metrics = evaluate.frechet_metrics(nets, real, noisy, batch=16)
        distances.append((metrics["fvd_domain"], metrics["fid_domain"]))
        psnrs.append(psnr(real, noisy))
    fvd, fid = zip(*distances, strict=True)
    assert fvd[0] < fvd[1] < fvd[2] and fid[0] < fid[1] < fid[2]
    assert psnrs[0] > psnrs[1] > psnrs[2]
    assert evaluate.frechet_metrics(nets, real, real, batch=16)["fvd_domain"] == pytest.approx(
        0, abs=1e-6
    )


def test_standard_metrics_are_skipped_with_reasons_when_weights_are_absent(tmp_path):
    DomainClassifier(DomainClassifierConfig()).save_pretrained(tmp_path / "dc")
    params = EvaluateParams(inception_weights=str(tmp_path / "missing.pth"))
    nets = load_feature_nets(params, tmp_path / "dc")
    assert nets.inception is None and nets.i3d is None and nets.lpips is None
    assert "missing.pth" in nets.skipped["fid, inception_score"]
    assert "evaluate.i3d_weights is not set" in nets.skipped["fvd, rfvd"]
    (tmp_path / "bad.pth").write_text("not weights")
    with pytest.raises(ValueError, match="bad.pth"):  # present but wrong: an error, not a skip
        load_feature_nets(EvaluateParams(i3d_weights=str(tmp_path / "bad.pth")), tmp_path / "dc")


def test_models_from_another_tracking_store_stop_evaluate_before_any_work(eval_workspace):
    root, _ = eval_workspace
    models = {n: root / "artifacts" / n for n in ("tokenizer", "mlm", "domain_classifier")}
    mlm_metrics = root / "artifacts" / "mlm" / "metrics.json"
    mlm_metrics.write_text(json.dumps({"mlflow_run_id": "0123456789abcdef0123456789abcdef"}))
    with pytest.raises(UserInputError, match="mlm's MLflow run 0123456789abcdef0123"):
        evaluate.run(
            "params.yaml", root / "data" / "clips", models, root / "artifacts" / "eval",
            root / "classes.json",
        )  # fmt: skip
    assert not (root / "artifacts" / "eval").exists()  # stopped before evaluating anything


@pytest.fixture
def eval_workspace(in_tmp, monkeypatch):
    """Clips, a tokenizer, an MLM and a domain classifier, with MLflow runs of the models."""
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    write_clip_folder(in_tmp / "data" / "clips", frames=5, size=32)
    torch.manual_seed(0)
    tokenizer = MagvitTokenizer(TokenizerConfig.preset("cpu"))
    grid = tokenizer.config.latent_shape(5, 32, 32)
    mlm = MaskedTokenTransformer(
        MLMConfig(bits=tokenizer.config.bits, num_factors=1, grid=grid, dim=32, depth=1, heads=2)
    )
    client = MlflowClient(uri)  # not the process's URI: a stage run in-process may have set it
    experiment = client.create_experiment("models")
    for name, model in (("tokenizer", tokenizer), ("mlm", mlm)):
        model.save_pretrained(in_tmp / "artifacts" / name)
        run_id = client.create_run(experiment).info.run_id
        metrics = {"mlflow_run_id": run_id}
        (in_tmp / "artifacts" / name / "metrics.json").write_text(json.dumps(metrics))
    DomainClassifier(DomainClassifierConfig(8, (8, 16), 16)).save_pretrained(
        in_tmp / "artifacts" / "domain_classifier"
    )
    params = {
        "decode": {"num_frames": 5, "crop_size": 32, "resize_short_side": 32},
        "train_mlm": {"sampling": {"steps": 2}},
        "evaluate": {
            "max_clips": 4,
            "compression_clips": 2,
            "rd_crfs": [30, 50],
            "codecs": ["h264"],
            "generation": {"samples_per_class": 1, "frame_prediction_clips": 2},
        },
    }
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return in_tmp, client


def test_evaluate_stage_writes_metrics_plots_samples_and_mlflow_run(eval_workspace):
    root, client = eval_workspace
    models = {n: root / "artifacts" / n for n in ("tokenizer", "mlm", "domain_classifier")}
    classes = root / "classes.json"
    classes.write_text(json.dumps([f"shape{i}" for i in range(7)]))  # one short: class7
    metrics = evaluate.run(
        "params.yaml", root / "data" / "clips", models, root / "artifacts" / "eval", classes
    )

    saved = json.loads((root / "artifacts/eval/metrics.json").read_text())
    assert saved == metrics
    recon = metrics["reconstruction"]
    assert set(recon) == {"synthetic", "real", "image"}
    assert recon["synthetic"]["clips"] == 4 and 0 < recon["synthetic"]["ms_ssim"] <= 1
    assert "rfvd_domain" in recon["synthetic"] and "rfvd_domain" not in recon["image"]
    assert "rfid" not in recon["synthetic"]  # no Inception weights: skipped, never faked
    for kind in ("synthetic", "real", "image"):
        assert set(recon[kind]["baselines"]) == {
            "clip_mean_colour",
            "frame_mean_colour",
            "token_footprint_mean",
            "block_mean_8x8",
            "block_mean_4x4",
        }
        saturation = recon[kind]["colour_saturation_reconstruction"]
        ratio = saturation / recon[kind]["colour_saturation_original"]
        assert recon[kind]["colour_saturation_ratio"] == pytest.approx(ratio, abs=1e-3)
    synthetic = recon["synthetic"]
    assert 0 <= synthetic["class_accuracy_reconstruction"] <= 1
    assert "class_accuracy_original" in synthetic and "class_accuracy_original" not in recon["real"]
    picture = np.asarray(Image.open(root / "artifacts/eval/reconstructions.png"))
    # 3 synthetic, 1 real, 2 image pairs of 32-px rows; 5 frames wide; 2-px separators
    assert picture.shape == (6 * 2 * 32 + 5 * 2, 5 * 32, 3)

    compression = metrics["compression"]
    assert compression["magvit"]["bpp_raw"] == pytest.approx(18 * 2 * 4 * 4 / (5 * 32 * 32))
    assert 0 < compression["magvit"]["bpp_coded"] <= compression["magvit"]["bpp_raw"] * 1.25
    assert compression["h264"]["crf"] in range(52) and compression["h264"]["bpp"] > 0

    generation = metrics["generation"]
    assert generation["class_conditional"]["samples"] == 8
    assert 0 <= generation["class_conditional"]["class_accuracy"] <= 1
    # the judge's accuracy on real clips and on reconstructions, beside the samples'
    judge = {k: generation["class_conditional"][f"class_accuracy_{k}"] for k in
             ("real_clips", "reconstructions")}  # fmt: skip
    assert judge == {
        "real_clips": synthetic["class_accuracy_original"],
        "reconstructions": synthetic["class_accuracy_reconstruction"],
    }
    frame_prediction = generation["frame_prediction"]
    copies = ("copy_last_condition_frame", "copy_last_condition_tokens", "reconstruction")
    baselines = [f"future_psnr_{k}" for k in copies]
    assert all(frame_prediction[k] > 0 for k in baselines)
    assert len({frame_prediction[k] for k in [*baselines, "future_psnr"]}) == 4
    # one row per class, 32 px high: a name column, then frames 0 and 4 of the 5-frame sample
    grid = np.asarray(Image.open(root / "artifacts/eval/samples/class_conditional.png"))
    assert grid.shape == (8 * 32, LABEL_WIDTH + 2 * 32 + 2, 3)
    for row in range(8):  # every row's name column holds dark text pixels
        assert (grid[row * 32 : (row + 1) * 32, :LABEL_WIDTH] < 100).any()
    assert generation["real_floor"]["fvd_domain"] >= 0
    assert generation["frame_prediction"]["clips"] == 2
    assert "fvd" not in generation["class_conditional"]

    skipped = json.loads((root / "artifacts/eval/skipped.json").read_text())
    assert set(skipped) == {"fid, inception_score", "fvd, rfvd", "lpips"}
    curves = (root / "artifacts/eval/rate_distortion/h264.csv").read_text().splitlines()
    assert curves[0] == "crf,bpp,psnr,ms_ssim" and len(curves) == 3
    for name in ("class_conditional.gif", "class_conditional.png", "frame_prediction.gif"):
        assert (root / "artifacts/eval/samples" / name).stat().st_size > 0

    (run,) = client.search_runs([client.get_experiment_by_name("magvit2-evaluation").experiment_id])
    tokenizer_run = json.loads((root / "artifacts/tokenizer/metrics.json").read_text())
    assert run.data.tags["tokenizer_run_id"] == tokenizer_run["mlflow_run_id"]
    assert run.data.metrics["compression/magvit/bpp_raw"] == pytest.approx(
        compression["magvit"]["bpp_raw"]
    )
    linked = client.get_run(tokenizer_run["mlflow_run_id"]).data.metrics
    assert linked["eval/reconstruction/synthetic/psnr"] == pytest.approx(recon["synthetic"]["psnr"])
