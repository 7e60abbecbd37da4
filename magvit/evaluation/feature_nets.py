"""The evaluation's feature networks: the domain classifier always, the standard ones when
their weights are on disk.

InceptionV3 (FID, IS), I3D (FVD) and LPIPS load only from local files named in params
(`evaluate.*_weights`). A path that is not set or not on disk skips those metrics with a
logged reason, recorded in artifacts/eval/skipped.json; nothing is downloaded and no other
network stands in under their names. A file that is there but wrong is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from magvit.params import EvaluateParams
from models.domain_classifier import DomainClassifier
from models.i3d import load_i3d
from models.inception import load_fid_inception
from models.losses import build_perceptual_loss

log = logging.getLogger("evaluate")


@dataclass
class FeatureNets:
    domain: DomainClassifier
    inception: nn.Module | None = None
    i3d: nn.Module | None = None
    lpips: nn.Module | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # metric family -> why


def _available(key: str, path: str | None, metrics: str, skipped: dict[str, str]) -> bool:
    if path is None:
        skipped[metrics] = f"evaluate.{key} is not set (a local weights file; see README)"
    elif not Path(path).is_file():
        skipped[metrics] = f"evaluate.{key}: no file at {path}"
    else:
        return True
    log.warning("skipping %s: %s", metrics, skipped[metrics])
    return False


def load_feature_nets(params: EvaluateParams, domain_dir: Path) -> FeatureNets:
    nets = FeatureNets(domain=DomainClassifier.from_pretrained(domain_dir).eval())
    if _available(
        "inception_weights", params.inception_weights, "fid, inception_score", nets.skipped
    ):
        nets.inception = load_fid_inception(params.inception_weights)
    if _available("i3d_weights", params.i3d_weights, "fvd, rfvd", nets.skipped):
        nets.i3d = load_i3d(params.i3d_weights)
    if _available("lpips_weights", params.lpips_weights, "lpips", nets.skipped):
        nets.lpips = build_perceptual_loss(params.lpips_weights).eval()
    return nets
