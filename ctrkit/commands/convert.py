"""``ctrkit convert CKPT --to tf|torch --out DIR``: the same model as a checkpoint of the other framework.

Train in one framework, serve in the other: ``DIR/best.tf`` (or ``DIR/best.pt``) holds the
checkpoint's weights mapped by :mod:`ctrkit.parity` (transposed Dense kernels, Conv1d layouts,
torch's names), with its model name, hyper-parameters, schema and training options, so that
``ctrkit evaluate DIR`` and ``ctrkit predict DIR`` score rows as the source does (float32:
within 1e-5). The run directory's ``encoder.npz`` (the dataset's encoder) is copied beside it, so
``ctrkit predict DIR RAW`` needs no store either. Only the weights are converted (an optimiser state and RNG states do not carry over
between frameworks): a run continues, with ``--resume``, in the framework that wrote it.

A TensorFlow checkpoint already holds its weights under torch's names in torch's layout; either
direction needs both frameworks installed (reading one, checking the other's model).

Bad input is one line and writes nothing: a missing, truncated or foreign checkpoint, one already
of the ``--to`` framework, a model without a weight mapping, weights whose names or shapes do not
fit the model the checkpoint describes, an ``--out`` that already holds a checkpoint of ``--to``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np  # light; torch and TensorFlow are imported inside the functions

TARGETS = {"tf": "tf", "tensorflow": "tf", "torch": "torch", "pytorch": "torch"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="a checkpoint of the other framework (PyTorch <-> TensorFlow)",
        description="Convert a checkpoint (a file, or a model_save_dir holding best.pt or best.tf) to the other "
                    "framework: writes DIR/best.tf or DIR/best.pt, which `ctrkit evaluate` and `ctrkit predict` "
                    "accept and which scores rows as the source does.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint, or model_save_dir (uses best.pt / best.tf)")
    parser.add_argument("--to", required=True, metavar="FRAMEWORK", help="tf or torch")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write best.tf / best.pt into")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.data.encoder import ENCODER_FILE, run_dir_encoder
    from ctrkit.errors import ConfigError
    from ctrkit.fileio import atomic_output
    from ctrkit.training.frameworks import checkpoint_framework, check_framework_available
    from ctrkit.training.rundir import FRAMEWORK_NAMES, check_run_directory, checkpoint_name

    target = TARGETS.get(str(args.to).lower())
    if target is None:
        raise ConfigError(f"--to must be one of tf, torch, got {args.to!r}")
    source = checkpoint_framework(args.checkpoint)
    if source == target:
        raise ConfigError(f"{args.checkpoint} is already a {FRAMEWORK_NAMES[target]} checkpoint; nothing to convert")
    for framework in (source, target):
        check_framework_available(framework, subject=f"ctrkit convert (a {FRAMEWORK_NAMES[framework]} checkpoint)")
    out_dir = Path(args.out)
    check_run_directory(out_dir)
    out = out_dir / checkpoint_name(target, "best")
    encoder = run_dir_encoder(args.checkpoint)  # the dataset's encoder: `ctrkit predict OUT RAW` needs no store
    for path in [out] + ([out_dir / ENCODER_FILE] if encoder is not None else []):
        if path.exists():
            raise ConfigError(f"--out {out_dir} already holds {path.name}; give another directory")
    name = (torch_to_tf if target == "tf" else tf_to_torch)(Path(args.checkpoint), out)
    if encoder is not None:
        with atomic_output(out_dir / ENCODER_FILE, "wb", flag="--out") as handle:
            handle.write(encoder.read_bytes())
    print(f"wrote {out} ({name}, {FRAMEWORK_NAMES[target]}){' and ' + ENCODER_FILE if encoder else ''} "
          f"from {args.checkpoint}")
    return 0


def _converted_entries(payload: dict[str, Any], source: Path, source_framework: str, target: str) -> dict[str, Any]:
    """The neutral entries of the converted ``best`` checkpoint (epoch and validation metrics kept)."""
    entries = {"kind": "best", "model_name": payload["model_name"], "hparams": payload["hparams"],
               "schema": payload["schema"], "config": {**payload["config"], "framework": target},
               "converted_from": {"path": str(source), "framework": source_framework, "kind": payload["kind"]}}
    for key in ("epoch", "valid"):
        if key in payload:
            entries[key] = payload[key]
    return entries


def _write_into(out: Path, write) -> None:
    """Create ``out``'s directory and write it (nothing is created before the conversion succeeded)."""
    from ctrkit.training.rundir import create_run_directory

    create_run_directory(out.parent)
    write()


def torch_to_tf(checkpoint: Path, out: Path) -> str:
    """``best.pt`` (or any torch checkpoint) -> ``out`` (``best.tf``); returns the model's name."""
    from ctrkit.pytorch.trainer import checkpoint_path, load_checkpoint
    from ctrkit.tensorflow.trainer import build_from_checkpoint, save_model_checkpoint

    source = checkpoint_path(checkpoint)
    payload = load_checkpoint(source)  # checked: entries, types, finite weights
    state = {name: tensor.detach().cpu().numpy() for name, tensor in payload["model"].items()}
    model, _ = build_from_checkpoint({**payload, "model": state, "extra": None}, source)  # names and shapes checked
    entries = _converted_entries(payload, source, "torch", "tf")
    _write_into(out, lambda: save_model_checkpoint(out, model, entries, kept=f"nothing was written at {out}"))
    return payload["model_name"]


def tf_to_torch(checkpoint: Path, out: Path) -> str:
    """``best.tf`` (or any TF checkpoint) -> ``out`` (``best.pt``); returns the model's name."""
    import torch

    from ctrkit import __version__
    from ctrkit.pytorch.trainer import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, build_from_checkpoint, save_checkpoint
    from ctrkit.tensorflow.trainer import checkpoint_path, load_checkpoint

    source = checkpoint_path(checkpoint)
    payload = load_checkpoint(source)  # checked: file, entries, types, finite weights
    weights = {name: torch.from_numpy(np.array(value)) for name, value in payload["model"].items()}
    converted = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "ctrkit_version": __version__,
                 "torch_version": str(torch.__version__), **_converted_entries(payload, source, "tf", "torch"),
                 "model": weights}
    build_from_checkpoint(converted, source)  # names and shapes checked on a meta skeleton, then loaded
    _write_into(out, lambda: save_checkpoint(out, converted, kept=f"nothing was written at {out}"))
    return payload["model_name"]

