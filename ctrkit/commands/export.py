"""``ctrkit export CKPT --format onnx|torchscript|savedmodel --out DIR``: a self-contained model bundle.

``DIR`` holds the model (``model.onnx``, TorchScript ``model.pt`` or ``savedmodel/``), the
dataset's encoder (``encoder.npz``) and ``manifest.json`` (input tensors, raw input columns, opset,
versions): :mod:`ctrkit.export`. Any checkpoint exports to every format: ONNX and TorchScript are
traced from the PyTorch model and SavedModel from the TensorFlow one, a checkpoint of the other
framework being converted first (``ctrkit convert``'s weight mapping). The artifact is checked
against the checkpoint on a batch before the bundle is renamed into place. ``ctrkit.load(DIR)``
scores raw rows with the bundle alone.

Errors are one line and leave nothing behind: an unknown format, a missing or broken checkpoint, a
run directory without ``encoder.npz`` (give ``--encoder STORE``), an existing ``--out`` (replaced
only with ``--overwrite``, and only if it is a bundle or an empty directory).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="a self-contained model bundle (ONNX, TorchScript or SavedModel + encoder + manifest)",
        description="Export a checkpoint (PyTorch or TensorFlow; a checkpoint, or a model_save_dir holding best.pt "
                    "or best.tf) as a bundle directory: the model in the chosen format, taking encoded tensors "
                    "and returning click probabilities with a free batch size, the dataset's encoder and "
                    "manifest.json.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint, or model_save_dir (uses best.pt / best.tf)")
    parser.add_argument("--format", required=True, metavar="FORMAT", help="onnx, torchscript or savedmodel")
    parser.add_argument("--out", required=True, metavar="DIR", help="the bundle directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--encoder", metavar="STORE",
                        help="the store (or encoder.npz) the model was trained on [default: the run directory's "
                             "encoder.npz]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.export.bundle import check_format, export_bundle

    check_format(args.format)  # before loading anything
    manifest = export_bundle(args.checkpoint, args.format, args.out, overwrite=args.overwrite, encoder=args.encoder)
    opset = f", opset {manifest['opset']}" if "opset" in manifest else ""
    converted = "" if manifest["source_framework"] == {"savedmodel": "tf"}.get(manifest["export_format"], "torch") \
        else f", converted from {manifest['source_framework']}"
    print(f"wrote {args.out}: {manifest['model']} as {manifest['export_format']} ({manifest['artifact']}{opset}"
          f"{converted}), encoder.npz, manifest.json; max difference to the checkpoint "
          f"{manifest.get('verified_max_abs_diff', float('nan')):.2g}")
    return 0
