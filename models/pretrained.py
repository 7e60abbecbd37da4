"""Model directories: `config.json` (versioned) + `model.safetensors`, never pickle.

`Pretrained` gives a module `save_pretrained(dir)` / `from_pretrained(dir)`; the module keeps
its typed config in `self.config` and names the config class in `config_class`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class DictConfig:
    """Mixin for a model's config dataclass: plain-dict round trip for config.json.

    Unknown keys are errors (a config written by another version is refused, not guessed
    at); JSON lists come back as the tuples the dataclasses hold."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class Pretrained:
    config_class: ClassVar[type[DictConfig]]
    checkpoint_label: ClassVar[str] = "model"  # names the kind of model in error messages

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json (versioned) and model.safetensors into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"format_version": FORMAT_VERSION, "config": self.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_FILE, metadata={"format_version": str(FORMAT_VERSION)})

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu"):
        """Rebuild the model from `directory`; errors name the missing or mismatched file."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (directory, config_path, weights_path):
            if not path.exists():
                raise FileNotFoundError(f"{cls.checkpoint_label} checkpoint: {path} does not exist")
        saved = json.loads(config_path.read_text())
        if saved.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{config_path}: format_version {saved.get('format_version')!r} is not "
                f"supported (expected {FORMAT_VERSION})"
            )
        model = cls(cls.config_class.from_dict(saved["config"]))
        state = load_file(weights_path, device=str(map_location))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{weights_path} does not match {config_path}: {err}") from err
        return model
