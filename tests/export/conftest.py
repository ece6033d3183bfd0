"""Shared fixtures of the export tests: tiny stores, one run per model, and their bundles (built once).

* a Criteo store from ``ctrkit synth criteo`` rows (13 models) and a raw-Taobao store from
  ``write_synthetic_taobao`` tables (DIN, DIEN), each with its encoder;
* one PyTorch run per registry model (one short epoch), whose weights are then moved away from
  their near-constant initialisation (so that the scores differ from row to row and a wrong
  export cannot pass by predicting a constant);
* the rows to score: raw Criteo rows (``Model.predict(df)``, as ``ctrkit predict`` reads them) and
  Taobao test rows already encoded (``Model.predict_batch``), with the checkpoint's scores;
* bundles of every model in every format, ONNX and TorchScript from the PyTorch checkpoints,
  SavedModel from TensorFlow checkpoints (``ctrkit convert`` of the PyTorch ones), plus the
  cross-framework paths (a PyTorch checkpoint to SavedModel, TensorFlow ones to ONNX and TorchScript).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ("onnx", "torchscript", "savedmodel")
CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
#: rows scored per model
ROWS = 40
#: (model, source framework, format) exported in addition to the native path of each format
CROSS = (("deepfm", "torch", "savedmodel"), ("din", "torch", "savedmodel"), ("dcn", "tf", "onnx"),
         ("dien", "tf", "onnx"), ("autoint+", "tf", "torchscript"))
SMALL = {"embed_size": 4, "hidden_units": [8], "epochs": 1, "batch_size": 512, "threads": 1}


@dataclass
class Case:
    """One model's run, the rows it scores and the checkpoint's scores of them."""

    name: str
    run: Path  # PyTorch run directory (best.pt, encoder.npz)
    raw: object | None  # polars DataFrame of raw rows (Criteo), or None (Taobao: encoded rows only)
    batch: dict  # the encoded rows
    expected: np.ndarray  # the checkpoint's probabilities of them
    store: object = None  # the store it was trained on
    tf_run: Path | None = None
    bundles: dict = field(default_factory=dict)  # (source framework, format) -> bundle directory


def _criteo_store(root: Path):
    import ctrkit
    from ctrkit.cli import main

    raw = root / "criteo.tsv"
    assert main(["synth", "criteo", str(raw), "--rows", "1500", "--seed", "0"]) == 0
    store = ctrkit.preprocess("criteo", raw, out=root / "criteo.lmdb", min_count=2)
    frame = pl.read_csv(raw, separator="\t", has_header=False, new_columns=CRITEO_COLUMNS, n_rows=ROWS,
                        infer_schema_length=0)
    return store, frame


def _taobao_store(root: Path):
    from ctrkit.data.batches import BatchReader
    from ctrkit.data.store import Store
    from ctrkit.data.synthetic_taobao import TABLES, TaobaoSizes, write_synthetic_taobao
    from ctrkit.data.taobao import TaobaoTables, preprocess_taobao

    tables = root / "taobao"
    tables.mkdir()
    write_synthetic_taobao(tables, seed=3, sizes=TaobaoSizes(impressions=1500, users=100, ads=120, categories=30,
                                                             behaviours_per_user=30))
    preprocess_taobao(TaobaoTables(*(tables / n for n in TABLES)), root / "taobao.lmdb", max_seq_len=8, buckets=1,
                      progress=False)
    store = Store(root / "taobao.lmdb")
    batch = next(iter(BatchReader(store, "test", ROWS, rank=0, world_size=1).iter_epoch(0)))
    return store, {k: v for k, v in batch.items() if k not in ("label", "group")}


def scramble(checkpoint: Path, seed: int, std: float = 0.15) -> None:
    """Add N(0, std^2) noise to every float weight of a PyTorch checkpoint (running variances kept)."""
    import torch

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in payload["model"].items():
        if tensor.is_floating_point() and not name.endswith("running_var"):
            tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * std)
    torch.save(payload, checkpoint)


def _train(name: str, store, root: Path, seed: int) -> Path:
    import ctrkit

    run = ctrkit.train(name, store, model_save_dir=str(root / "runs" / name.replace("+", "_plus")), **SMALL)
    scramble(run.directory / "best.pt", seed)
    return run.directory


def _to_tf(run: Path, root: Path) -> Path:
    from ctrkit.commands.convert import torch_to_tf

    out = root / "tf_runs" / run.name
    torch_to_tf(run / "best.pt", out / "best.tf")
    shutil.copy(run / "encoder.npz", out / "encoder.npz")
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Case]:
    """One scrambled PyTorch run per registry model with its rows and the checkpoint's scores."""
    import ctrkit
    from ctrkit.registry import MODELS

    root = tmp_path_factory.mktemp("export_runs")
    criteo, frame = _criteo_store(root)
    taobao, taobao_batch = _taobao_store(root)
    cases = {}
    for seed, (name, info) in enumerate(MODELS.items()):
        run = _train(name, taobao if info.needs_sequence else criteo, root, seed)
        model = ctrkit.load(run)
        if info.needs_sequence:
            batch, raw, expected = taobao_batch, None, model.predict_batch(taobao_batch)
        else:
            batch, raw, expected = model.encode(frame).batch, frame, model.predict(frame)
        assert expected.shape == (ROWS,) and expected.std() > 1e-3, name  # scores that tell rows apart
        cases[name] = Case(name, run, raw, batch, expected, taobao if info.needs_sequence else criteo)
    return cases


@pytest.fixture(scope="session")
def bundles(runs, tmp_path_factory) -> dict[str, Case]:
    """``runs`` with every model exported to every format (and the cross-framework paths of :data:`CROSS`)."""
    from ctrkit.export import export_bundle

    root = tmp_path_factory.mktemp("export_bundles")
    wanted = {(name, "torch", fmt) for name in runs for fmt in ("onnx", "torchscript")}
    wanted |= {(name, "tf", "savedmodel") for name in runs} | set(CROSS)
    for name, framework, fmt in sorted(wanted):
        case = runs[name]
        if framework == "tf" and case.tf_run is None:
            case.tf_run = _to_tf(case.run, root)
        source = case.run if framework == "torch" else case.tf_run
        out = root / f"{case.run.name}-{framework}-{fmt}"
        export_bundle(source, fmt, out, verify=False)
        case.bundles[(framework, fmt)] = out
    return runs


sys.path.insert(0, str(Path(__file__).resolve().parent))
