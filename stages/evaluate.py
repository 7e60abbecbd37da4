"""Stage `evaluate`: reconstruction, compression and generation metrics (paper section 4).

- Reconstruction of held-out test clips, synthetic and real footage apart: PSNR, SSIM,
  MS-SSIM, codebook utilisation and perplexity, rFVD on domain features; LPIPS, rFVD (I3D) and
  rFID (InceptionV3) when their weights are given. For scale: the PSNR of trivial predictors
  (mean colours of clips, frames, token footprints, blocks), the colour saturation of
  reconstructions against originals, and the domain classifier's class accuracy on the
  labelled clips and on their reconstructions.
- Compression (Table 3 in small): bits per pixel of the token stream, raw and entropy coded,
  against H.264 and HEVC at the coded token rate, with PSNR / MS-SSIM; rate-distortion curves.
- Generation: class-conditional samples and frame prediction, scored against held-out real
  clips by fvd_domain / fid_domain (FVD / FID / IS with weights) and by the domain classifier's
  class accuracy. The floor is the same distance for real train clips, as many as samples.

Writes artifacts/eval/ (metrics.json, skipped.json, rate_distortion/*.csv, samples/,
reconstructions.png) and one MLflow run linked to the tokenizer and MLM runs, whose runs also
get the headline `eval/*` metrics so the nightly champion decision can compare them.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magvit.cli import CLIP_FOLDER, MODEL_FOLDER, require_path, run_stage
from magvit.errors import UserInputError
from magvit.evaluation.baselines import (
    baseline_psnrs,
    colour_saturation,
    copy_last_condition_frame,
)
from magvit.evaluation.compression import (
    codec_at_bpp,
    encode_tokens,
    rate_distortion_curve,
    token_bits_per_pixel,
)
from magvit.evaluation.domain_features import class_accuracy, domain_outputs
from magvit.evaluation.feature_nets import FeatureNets, load_feature_nets
from magvit.evaluation.pictures import reconstruction_grid, sample_grid
from magvit.evaluation.reconstruction import reconstruct_clips
from magvit.formats.clip_shards import evenly_spaced, held_out_sets, labelled_clips
from magvit.formats.corpus_manifest import class_names
from magvit.formats.files import atomic_folder
from magvit.logs import configure_logging
from magvit.media.video_encode import write_gif
from magvit.params import Params, load_params
from magvit.runtime.mlflow_tracking import experiment_id, tracking_uri
from magvit.sampling import (
    class_samples,
    predict_frames,
    sampler_config,
    tile_clips,
    tokens_to_video,
)
from magvit.training.clip_batches import to_model_input
from models.frechet import frechet_distance_between
from models.i3d import i3d_features
from models.inception import inception_features, inception_outputs, inception_score
from models.mlm import MaskedTokenTransformer
from models.recon_metrics import ms_ssim, psnr
from models.tokenizer import MagvitTokenizer

log = logging.getLogger("evaluate")
EXPERIMENT = "magvit2-evaluation"
PICTURE_CLIPS = {"synthetic": 3, "real": 2, "image": 2}  # per kind, in reconstructions.png


def spread(clips: np.ndarray, count: int) -> np.ndarray:
    """At most `count` clips, evenly spaced over the set."""
    return clips[evenly_spaced(len(clips), count)]


def as_frames(videos: np.ndarray) -> np.ndarray:
    """uint8 [N, T, H, W, 3] -> [N * T, 1, H, W, 3]: each frame a T = 1 clip."""
    return videos.reshape(-1, 1, *videos.shape[2:])


def frechet_metrics(nets: FeatureNets, real: np.ndarray, fake: np.ndarray, batch: int) -> dict:
    """Fréchet distances of two uint8 video sets under every network that is loaded.

    A distance needs two feature rows a side: video distances are left out for sets of one
    clip (and for images), frame distances for sets of one frame.
    """
    domain = nets.domain
    metrics = {}
    if min(len(real), len(fake)) * real.shape[1] >= 2:
        metrics["fid_domain"] = frechet_distance_between(
            domain_outputs(domain, as_frames(real), batch)[0],
            domain_outputs(domain, as_frames(fake), batch)[0],
        )
        if nets.inception is not None:
            metrics["fid"] = frechet_distance_between(
                inception_features(nets.inception, as_frames(real)[:, 0], batch),
                inception_features(nets.inception, as_frames(fake)[:, 0], batch),
            )
    if min(len(real), len(fake)) >= 2 and real.shape[1] > 1:
        metrics["fvd_domain"] = frechet_distance_between(
            domain_outputs(domain, real, batch)[0], domain_outputs(domain, fake, batch)[0]
        )
        if nets.i3d is not None:
            metrics["fvd"] = frechet_distance_between(
                i3d_features(nets.i3d, real, batch), i3d_features(nets.i3d, fake, batch)
            )
    return {k: round(float(v), 4) for k, v in metrics.items()}


@torch.no_grad()
def lpips_distance(lpips: torch.nn.Module, real: np.ndarray, fake: np.ndarray, batch: int) -> float:
    scores = [
        float(lpips(to_model_input(fake[i : i + batch]), to_model_input(real[i : i + batch])))
        for i in range(0, len(real), batch)
    ]
    return float(np.mean(scores))


def paired_scores(name: str, original: float, reconstruction: float) -> dict[str, float]:
    """`name` on the originals and on their reconstructions, and the ratio of the two unless
    the originals score 0 (grey clips, a classifier that gets none right)."""
    scores = {f"{name}_original": original, f"{name}_reconstruction": reconstruction}
    if original > 0:
        scores[f"{name}_ratio"] = reconstruction / original
    return scores


def reconstruction_metrics(
    tokenizer: MagvitTokenizer,
    sets: dict[str, np.ndarray],
    nets: FeatureNets,
    batch: int,
    labels: np.ndarray | None = None,
) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """Per kind of held-out clip (synthetic, real, image): quality of the reconstructions,
    the PSNR of trivial predictors (`baselines`) and colour saturation; with `labels` (of the
    synthetic clips) the domain classifier's class accuracy. Also a few (original,
    reconstruction) clip pairs of each kind, evenly spread, for the picture."""
    factors = tokenizer.config.spatial_factor, tokenizer.config.temporal_factor
    metrics, pairs = {}, []
    for kind, clips in sets.items():
        result = reconstruct_clips(tokenizer, clips, "cpu", batch)
        recon = result["recon"]
        scores = {
            "psnr": result["psnr"],
            "ssim": result["ssim"],
            "ms_ssim": ms_ssim(clips, recon),
            "codebook_utilisation": result["codebook_utilisation"],
            "perplexity": result["perplexity"],
        }
        if nets.lpips is not None:
            scores["lpips"] = lpips_distance(nets.lpips, clips, recon, batch)
        frechet = frechet_metrics(nets, clips, recon, batch)
        scores |= {f"r{name}": value for name, value in frechet.items()}  # rFVD, rFID...
        scores |= paired_scores(
            "colour_saturation", colour_saturation(clips), colour_saturation(recon)
        )
        if kind == "synthetic" and labels is not None:
            accuracies = [class_accuracy(nets.domain, c, labels, batch) for c in (clips, recon)]
            scores |= paired_scores("class_accuracy", *accuracies)
        baselines = baseline_psnrs(clips, *factors)
        metrics[kind] = {k: round(float(v), 4) for k, v in scores.items()} | {
            "baselines": {k: round(float(v), 4) for k, v in baselines.items()},
            "clips": len(clips),
        }
        picks = evenly_spaced(len(clips), PICTURE_CLIPS[kind])
        pairs += [(clips[i], recon[i]) for i in picks]
    return metrics, pairs


def compression_metrics(
    tokenizer: MagvitTokenizer, clips: np.ndarray, params: Params
) -> tuple[dict, dict[str, list[dict]]]:
    """Token-stream bpp (raw, coded) and the codecs at the coded rate; rate-distortion rows.

    Every clip is coded on its own, by the token coder as by the codecs (one clip, one
    stream). A codec whose lowest rate (CRF 51) still lies above the token rate cannot be
    matched; `matched` says whether the achieved bpp is within 10% of the target.
    """
    result = reconstruct_clips(tokenizer, clips, "cpu", params.evaluate.batch_size)
    tokens, bits, fps = result["tokens"], tokenizer.config.bits, params.decode.fps
    pixels = int(np.prod(clips.shape[:4]))  # clips x frames x height x width
    coded_bits = sum(8 * len(encode_tokens(clip_tokens.ravel(), bits)) for clip_tokens in tokens)
    coded_bpp = coded_bits / pixels
    ours = {
        "bpp_raw": token_bits_per_pixel(tokens.size, bits, pixels),
        "bpp_coded": coded_bpp,
        "psnr": psnr(clips, result["recon"]),
        "ms_ssim": ms_ssim(clips, result["recon"]),
    }
    metrics = {"magvit": ours, "clips": len(clips)}
    curves = {
        "magvit": [{"crf": "", "bpp": coded_bpp, "psnr": ours["psnr"], "ms_ssim": ours["ms_ssim"]}]
    }
    for codec in params.evaluate.codecs:
        matched = codec_at_bpp(list(clips), codec, coded_bpp, fps=fps)
        metrics[codec] = {
            "bpp": matched.bpp,
            "crf": matched.crf,
            "matched": abs(matched.bpp - coded_bpp) <= 0.1 * coded_bpp,
            "psnr": matched.psnr,
            "ms_ssim": matched.ms_ssim,
        }
        rows = rate_distortion_curve(list(clips), codec, params.evaluate.rd_crfs, fps=fps)
        curves[codec] = [
            {"crf": r.crf, "bpp": r.bpp, "psnr": r.psnr, "ms_ssim": r.ms_ssim} for r in rows
        ]
    return _rounded(metrics), curves


def _rounded(tree):
    if isinstance(tree, dict):
        return {k: _rounded(v) for k, v in tree.items()}
    return round(float(tree), 5) if isinstance(tree, float) else tree


def generation_metrics(
    mlm: MaskedTokenTransformer,
    tokenizer: MagvitTokenizer,
    nets: FeatureNets,
    clips_dir: Path,
    params: Params,
    judge: dict[str, float],
) -> tuple[dict, dict[str, np.ndarray]]:
    """Class-conditional and frame-prediction samples scored against held-out real clips.

    `judge`: the domain classifier's accuracy on held-out real clips and on their
    reconstructions, reported beside the samples' (the second is what a perfect masked model
    could reach through this tokenizer). Frame prediction is shown beside copying the last
    condition frame forward."""
    gen, batch, seed = params.evaluate.generation, params.evaluate.batch_size, params.seed
    config = sampler_config(params.train_mlm.sampling)
    count = gen.samples_per_class
    by_class = np.stack(  # [C, S, T, H, W, 3]; sample s of class c drawn with seed + c*S + s
        [
            class_samples(mlm, tokenizer, c, count, config, seed + c * count)
            for c in range(mlm.config.num_classes)
        ]
    )
    samples = by_class.reshape(-1, *by_class.shape[2:])
    requested = np.repeat(np.arange(mlm.config.num_classes), count)
    reference = labelled_clips(clips_dir, ("val", "test"), params.evaluate.max_clips)[0]
    train_clips = labelled_clips(clips_dir, ("train",), None)[0]
    floor_pick = np.random.default_rng(seed).permutation(len(train_clips))[: len(samples)]

    metrics = {"class_conditional": frechet_metrics(nets, reference, samples, batch)}
    metrics["class_conditional"]["class_accuracy"] = class_accuracy(
        nets.domain, samples, requested, batch
    )
    metrics["class_conditional"] |= {f"class_accuracy_{k}": v for k, v in judge.items()}
    metrics["class_conditional"]["samples"] = len(samples)
    if nets.inception is not None:
        logits = inception_outputs(nets.inception, as_frames(samples)[:, 0], batch)[1]
        metrics["class_conditional"]["inception_score"] = inception_score(logits)[0]
    metrics["real_floor"] = frechet_metrics(nets, reference, train_clips[floor_pick], batch)
    metrics["real_floor"]["clips"] = len(floor_pick)

    truth, labels = labelled_clips(clips_dir, ("test",), gen.frame_prediction_clips)
    predicted = np.concatenate(
        [
            predict_frames(mlm, tokenizer, clip, params.train_mlm.condition_frames, 1, config, seed)
            for clip in truth
        ]
    )
    condition_frames = params.train_mlm.condition_frames
    given = 1 + 4 * (condition_frames - 1)  # pixel frames in the condition
    future = truth[:, given:]
    metrics["frame_prediction"] = frechet_metrics(nets, truth, predicted, batch) | {
        "class_accuracy": class_accuracy(nets.domain, predicted, labels, batch),
        "future_psnr": psnr(future, predicted[:, given:]),
        **future_psnr_baselines(tokenizer, truth, condition_frames, given, batch),
        "clips": len(truth),
    }
    media = {"class_conditional": by_class, "frame_prediction": np.stack([truth, predicted], 1)}
    return _rounded(metrics), media


def future_psnr_baselines(
    tokenizer: MagvitTokenizer, truth: np.ndarray, condition_frames: int, given: int, batch: int
) -> dict[str, float]:
    """PSNR of the frames after the condition (`given` pixel frames) for what frame
    prediction is read against: the last condition frame repeated, in pixels and in tokens
    (its latent frame's tokens repeated, then decoded: the same tokenizer as the model's
    predictions), and the tokenizer's reconstruction of the truth (a perfect model's)."""
    future = truth[:, given:]
    held = np.repeat(truth[:, given - 1 : given], future.shape[1], axis=1)
    grids = torch.cat(
        [
            tokenizer.encode(torch.from_numpy(truth[i : i + batch]))
            for i in range(0, len(truth), batch)
        ]
    )  # [B, t, h, w]
    grid = tuple(grids.shape[1:])
    flat = grids.flatten(1)
    copied = tokens_to_video(
        tokenizer, copy_last_condition_frame(flat, condition_frames, grid), grid
    )
    reconstructed = tokens_to_video(tokenizer, flat, grid)
    return {
        "future_psnr_copy_last_condition_frame": psnr(future, held),
        "future_psnr_copy_last_condition_tokens": psnr(future, copied[:, given:]),
        "future_psnr_reconstruction": psnr(future, reconstructed[:, given:]),
    }


def write_media(
    media: dict[str, np.ndarray], names: list[str], out_dir: Path, fps: float
) -> list[Path]:
    """Sample pictures: class-conditional samples as a PNG labelled by class (frames 0, 4, 8
    of each) and a GIF (a row per class); frame prediction as truth beside prediction, a GIF
    and a PNG of every frame."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_class = media["class_conditional"]  # [C, S, T, H, W, 3]
    pairs = media["frame_prediction"][:8]  # [n, 2 (truth, predicted), T, H, W, 3]
    gifs = {
        "class_conditional": tile_clips(
            by_class.reshape(-1, *by_class.shape[2:]), by_class.shape[1]
        ),
        "frame_prediction": tile_clips(pairs.reshape(-1, *pairs.shape[2:]), 2),
    }
    pictures = {
        "class_conditional": sample_grid(by_class, names),
        "frame_prediction": np.concatenate(list(gifs["frame_prediction"]), axis=1),
    }
    paths = []
    for name, grid in gifs.items():  # grid [T, H', W', 3]
        write_gif(grid, out_dir / f"{name}.gif", fps)
        Image.fromarray(pictures[name]).save(out_dir / f"{name}.png")
        paths += [out_dir / f"{name}.gif", out_dir / f"{name}.png"]
    return paths


def write_curves(curves: dict[str, list[dict]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in curves.items():
        with (out_dir / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["crf", "bpp", "psnr", "ms_ssim"])
            writer.writeheader()
            writer.writerows(rows)


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 1}} -> {"a/b": 1.0}, numbers only (MLflow metric names)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def model_run_ids(model_dirs: dict[str, Path]) -> dict[str, str]:
    """The MLflow run id each trained model recorded in its metrics.json ("" for none)."""
    return {
        name: json.loads((directory / "metrics.json").read_text()).get("mlflow_run_id", "")
        for name, directory in model_dirs.items()
    }


def check_model_runs(run_ids: dict[str, str]) -> None:
    """Stop before any work when a model's training run is not in this tracking store (models
    copied from another clone, another MLFLOW_TRACKING_URI): its eval metrics have nowhere
    to go."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    for name, run_id in run_ids.items():
        if not run_id:
            continue
        try:
            client.get_run(run_id)
        except MlflowException:
            raise UserInputError(
                f"the {name}'s MLflow run {run_id} (in its metrics.json) is not in the "
                f"tracking store {tracking_uri()}; set MLFLOW_TRACKING_URI to the store it "
                "was trained with, or retrain it"
            ) from None


def record_in_mlflow(
    metrics: dict, skipped: dict, params: Params, run_ids: dict[str, str], out_dir: Path
) -> str:
    """One evaluation run, linked to the model runs; the model runs get `eval/*` metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    tags = {f"{name}_run_id": run_id for name, run_id in run_ids.items()}
    tags |= {f"skipped/{k}": v for k, v in skipped.items()}
    run = client.create_run(experiment_id(client, EXPERIMENT), run_name="evaluate", tags=tags)
    run_id = run.info.run_id
    for key, value in flatten(params.evaluate.model_dump()).items():
        client.log_param(run_id, key, value)
    for key, value in flatten(metrics).items():
        client.log_metric(run_id, key, value)
    client.log_artifacts(run_id, str(out_dir))
    headline = {"tokenizer": ("reconstruction", "compression"), "mlm": ("generation",)}
    for name, sections in headline.items():
        model_run = run_ids[name]
        for key, value in flatten({s: metrics[s] for s in sections}, "eval/").items():
            if model_run:
                client.log_metric(model_run, key, value)
    client.set_terminated(run_id)
    return run_id


def run(
    params_path: str,
    clips_dir: Path,
    model_dirs: dict[str, Path],
    out_dir: Path,
    classes_json: Path,
    record: bool = True,
) -> dict:
    """`model_dirs`: the "tokenizer", "mlm" and "domain_classifier" model directories;
    `classes_json`: the corpus's class names (labels of the sample pictures)."""
    params = load_params(params_path)
    evaluate = params.evaluate
    run_ids = model_run_ids({k: model_dirs[k] for k in ("tokenizer", "mlm")})
    if record:
        check_model_runs(run_ids)
    torch.manual_seed(params.seed)
    tokenizer = MagvitTokenizer.from_pretrained(model_dirs["tokenizer"]).eval()
    mlm = MaskedTokenTransformer.from_pretrained(model_dirs["mlm"]).eval()
    nets = load_feature_nets(evaluate, model_dirs["domain_classifier"])

    sets = {k: spread(v, evaluate.max_clips) for k, v in held_out_sets(clips_dir, "test").items()}
    # the same synthetic clips (same rows, same even spread), with their labels
    sets["synthetic"], labels = labelled_clips(clips_dir, ("test",), evaluate.max_clips)
    videos = np.concatenate([sets[k] for k in ("synthetic", "real") if k in sets])
    log.info("reconstruction of %s held-out clips", {k: len(v) for k, v in sets.items()})
    reconstruction, pairs = reconstruction_metrics(
        tokenizer, sets, nets, evaluate.batch_size, labels
    )
    metrics = {"reconstruction": reconstruction}
    log.info(
        "compression: %d clips, codecs %s",
        min(len(videos), evaluate.compression_clips),
        evaluate.codecs,
    )
    compression, curves = compression_metrics(
        tokenizer, spread(videos, evaluate.compression_clips), params
    )
    metrics["compression"] = compression
    log.info("generation: %d samples per class", evaluate.generation.samples_per_class)
    synthetic = reconstruction.get("synthetic", {})
    judge = {  # the classifier on held-out real clips and on their reconstructions
        name: synthetic[key]
        for name, key in (
            ("real_clips", "class_accuracy_original"),
            ("reconstructions", "class_accuracy_reconstruction"),
        )
        if key in synthetic
    }
    metrics["generation"], media = generation_metrics(
        mlm, tokenizer, nets, clips_dir, params, judge
    )

    names = class_names(classes_json, mlm.config.num_classes)
    with atomic_folder(out_dir) as building:  # replaces out_dir when all of it is written
        Image.fromarray(reconstruction_grid(pairs)).save(building / "reconstructions.png")
        write_curves(curves, building / "rate_distortion")
        write_media(media, names, building / "samples", params.decode.fps)
        (building / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (building / "skipped.json").write_text(json.dumps(nets.skipped, indent=2) + "\n")
        if record:
            run_id = record_in_mlflow(metrics, nets.skipped, params, run_ids, building)
            log.info("evaluation recorded in MLflow run %s", run_id)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--clips", required=True, help="clip shard folder")
    parser.add_argument("--tokenizer", required=True, help="tokenizer model directory")
    parser.add_argument("--mlm", required=True, help="masked token model directory")
    parser.add_argument("--domain-classifier", required=True, help="domain classifier directory")
    parser.add_argument("--classes", required=True, help="classes.json of the corpus")
    parser.add_argument(
        "--out", required=True, help="folder for metrics, plots, samples (replaced when complete)"
    )
    args = parser.parse_args(argv)
    clips = require_path("--clips", Path(args.clips), CLIP_FOLDER)
    model_dirs = {
        "tokenizer": require_path("--tokenizer", Path(args.tokenizer), MODEL_FOLDER),
        "mlm": require_path("--mlm", Path(args.mlm), MODEL_FOLDER),
        "domain_classifier": require_path(
            "--domain-classifier", Path(args.domain_classifier), MODEL_FOLDER
        ),
    }
    configure_logging()
    run(args.params, clips, model_dirs, Path(args.out), Path(args.classes))


if __name__ == "__main__":
    run_stage(main)
