"""The domain classifier as a judge: its features (fvd_domain, fid_domain) and predicted
classes of uint8 clips."""

from __future__ import annotations

import numpy as np
import torch

from magvit.training.clip_batches import to_model_input
from models.domain_classifier import DomainClassifier


@torch.no_grad()
def domain_outputs(
    model: DomainClassifier, videos: np.ndarray, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 [N, feature_dim], predicted class [N]) of uint8 videos [N, T, H, W, 3]."""
    model.eval()
    features, predictions = [], []
    for start in range(0, len(videos), batch_size):
        hidden = model.features(to_model_input(videos[start : start + batch_size]))
        features.append(hidden.double().numpy())
        predictions.append(model.head(hidden).argmax(-1).numpy())
    return np.concatenate(features), np.concatenate(predictions)


def class_accuracy(
    model: DomainClassifier, videos: np.ndarray, labels: np.ndarray, batch_size: int = 32
) -> float:
    """Fraction of uint8 videos [N, T, H, W, 3] whose predicted class is their label [N]."""
    return float((domain_outputs(model, videos, batch_size)[1] == labels).mean())
