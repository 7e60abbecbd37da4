"""Registering model directories in the MLflow Model Registry, and loading them back.

A registered model is an MLflow pyfunc whose only artifact is the model directory
(`config.json` + `model.safetensors`): the weights are never pickled, and
`model_dir_from_uri("models:/magvit2-tokenizer@champion")` gives the directory back.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import yaml
from mlflow.tracking import MlflowClient

MODEL_DIR_ARTIFACT = "model_dir"
PIP_REQUIREMENTS = ["torch==2.13.0", "safetensors", "einops", "numpy"]


class TokenizerPyfunc(mlflow.pyfunc.PythonModel):
    """predict(uint8 video [B, T, H, W, 3]) -> int64 tokens [B, t, h, w]."""

    def load_context(self, context) -> None:
        from models.tokenizer import MagvitTokenizer

        self.model = MagvitTokenizer.from_pretrained(context.artifacts[MODEL_DIR_ARTIFACT]).eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch

        video = torch.as_tensor(np.asarray(model_input, dtype=np.uint8))
        return self.model.encode(video).numpy()


class MLMPyfunc(mlflow.pyfunc.PythonModel):
    """predict(class ids [B]; the no-label id for unconditional) -> token grids [B, N]."""

    def load_context(self, context) -> None:
        from models.mlm import MaskedTokenTransformer

        directory = context.artifacts[MODEL_DIR_ARTIFACT]
        self.model = MaskedTokenTransformer.from_pretrained(directory).eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch

        from models.maskgit import sample

        labels = torch.as_tensor(np.asarray(model_input, dtype=np.int64).reshape(-1))
        seed = int((params or {}).get("seed", 0))
        return sample(self.model, labels, seed=seed).numpy()


def register_model_dir(
    run_id: str,
    model_dir: Path,
    registered_name: str,
    python_model: mlflow.pyfunc.PythonModel,
    bootstrap_alias: str | None = "champion",
) -> str:
    """Log `model_dir` as a pyfunc model of `run_id` and register it; returns the version.

    When the registered model has no `bootstrap_alias` yet, this first version takes it.
    """
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=registered_name,
            python_model=python_model,
            artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=registered_name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    if bootstrap_alias:
        aliases = client.get_registered_model(registered_name).aliases
        if bootstrap_alias not in aliases:
            client.set_registered_model_alias(registered_name, bootstrap_alias, version)
    return version


def model_dir_from_uri(uri: str, destination: Path | None = None) -> Path:
    """A local model directory for a path or an MLflow model URI (models:/..., runs:/...)."""
    if not uri.startswith(("models:/", "runs:/")) and "://" not in uri:
        return Path(uri)
    root = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(destination) if destination else None
        )
    )
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if MODEL_DIR_ARTIFACT not in artifacts:
        raise ValueError(
            f"{uri} is not a model registered by this project (no {MODEL_DIR_ARTIFACT})"
        )
    return root / artifacts[MODEL_DIR_ARTIFACT]["path"]
