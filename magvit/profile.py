"""Profiles: params files that hold only what differs from params.yaml (params/paper.yaml).

    python -m magvit.profile PROFILE           the `-S key=value` arguments of `dvc exp run`
    python -m magvit.profile PROFILE --check   validate params.yaml + PROFILE, build both
                                               models and run one batch on the meta device

DVC applies a profile as `-S` overrides, so an experiment records exactly the params it ran
with; the check catches a profile that would fail at its first GPU step, on any machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from magvit.errors import UserInputError
from magvit.params import PARAMS_FILE, Params, parse_params, read_params_mapping


def set_param_args(profile: dict, base: dict, prefix: str = "") -> list[str]:
    """`key=value` for every leaf of `profile` (dotted keys, values in YAML flow style), each
    a key that `base` (params.yaml) has: DVC's -S cannot add keys without `+`, and a key
    params.yaml lacks is a typo here."""
    args = []
    for key, value in profile.items():
        dotted = f"{prefix}{key}"
        if not isinstance(base, dict) or key not in base:
            raise UserInputError(f"the profile sets {dotted}, which params.yaml does not have")
        if isinstance(value, dict) and value and isinstance(base[key], dict):
            args += set_param_args(value, base[key], f"{dotted}.")
        else:
            flow = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            args.append(f"{dotted}={flow.removesuffix('...').strip()}")
    return args


def merge(base: dict, profile: dict) -> dict:
    """params.yaml's mapping with the profile's leaves replacing its own."""
    merged = dict(base)
    for key, value in profile.items():
        if isinstance(value, dict) and value and isinstance(base.get(key), dict):
            merged[key] = merge(base[key], value)
        else:
            merged[key] = value
    return merged


def check(params: Params) -> dict[str, object]:
    """Both models of `params` built on the meta device (no memory, no FLOPs) and one
    training batch per worker through each: the shapes a GPU run would meet first."""
    import torch

    from models.mlm import MASK_ID, MaskedTokenTransformer
    from models.tokenizer import MagvitTokenizer

    decode, train = params.decode, params.train_tokenizer
    tokenizer_config = params.tokenizer.config()
    mlm_config = params.mlm_config(tokenizer_config)
    grid = mlm_config.grid

    with torch.device("meta"):
        tokenizer = MagvitTokenizer(tokenizer_config)
        mlm = MaskedTokenTransformer(mlm_config)
        clips = torch.empty(train.batch_size, 3, decode.num_frames, decode.crop_size,
                            decode.crop_size)  # fmt: skip
        latents = tokenizer.encoder(clips)
        recon = tokenizer.decode_codes(tokenizer.quantizer.indices_to_codes(
            torch.zeros(train.batch_size, *grid, dtype=torch.long)
        ))  # fmt: skip
        tokens = torch.full((params.train_mlm.batch_size, mlm_config.num_tokens), MASK_ID)
        logits = mlm(tokens, torch.zeros(params.train_mlm.batch_size, dtype=torch.long))
    expected_recon = (train.batch_size, 3, decode.num_frames, decode.crop_size, decode.crop_size)
    if tuple(recon.shape) != expected_recon:
        raise UserInputError(f"the tokenizer decodes {tuple(recon.shape)}, not {expected_recon}")
    return {
        "clip": f"{decode.num_frames} x {decode.crop_size} x {decode.crop_size}",
        "tokens": " x ".join(map(str, grid)),
        "vocabulary": f"2^{tokenizer_config.bits}",
        "tokenizer_parameters": sum(p.numel() for p in tokenizer.parameters()),
        "encoder_output": tuple(latents.shape),
        "mlm_parameters": sum(p.numel() for p in mlm.parameters()),
        "mlm_logits": tuple(logits.shape),
        "gpus": params.ray.train.num_workers if params.ray.train.use_gpu else 0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m magvit.profile",
        description="Turn a profile (a params file holding only what differs from "
        "params.yaml) into `dvc exp run -S` arguments, or check it on the meta device.",
    )
    parser.add_argument("profile", type=Path, help="e.g. params/paper.yaml")
    parser.add_argument(
        "--params", type=Path, default=PARAMS_FILE, help="the base params (default: params.yaml)"
    )
    parser.add_argument(
        "--check", action="store_true", help="build the models and one batch; print a summary"
    )
    args = parser.parse_args(argv)
    try:
        base, profile = read_params_mapping(args.params), read_params_mapping(args.profile)
        overrides = set_param_args(profile, base)
        if not args.check:
            print(shlex.join(arg for pair in overrides for arg in ("-S", pair)))
            return
        params = parse_params(merge(base, profile), f"{args.params} + {args.profile}")
        for key, value in check(params).items():
            print(f"{key}: {value}")
    except (UserInputError, ValueError) as error:
        sys.exit(f"magvit.profile: {error}")


if __name__ == "__main__":
    main()
