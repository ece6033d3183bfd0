"""Shared by the runner scripts in this directory (each runs in its own process, often under the
peers' virtualenv, so this module needs nothing but numpy, the standard library and
``benchmarks/common.py``).

A runner is started by ``bench_models.py`` as::

    PYTHON benchmarks/peers/run_X.py --spec SPEC.json

``SPEC.json`` says which model to build, where the dumped rows are and where to write the test
predictions; the runner prints exactly one line starting with ``RESULT `` followed by a JSON object
(see :func:`emit`). Everything else it prints is kept only for the log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py: standard library only
from common import own_peak_rss_mb, own_rss_mb  # noqa: E402,F401  (re-exported to the runners)

RESULT_PREFIX = "RESULT "


def read_spec() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args()
    return json.loads(args.spec.read_text())


def build_deepctr_model(spec: dict[str, Any], rows: dict[str, Any], feature_class: Any, models: dict[str, Any],
                        library: str, **library_kwargs: Any) -> Any:
    """One of the benchmark's models from DeepCTR (TF) or DeepCTR-Torch, whose APIs are the same.

    ``feature_class`` is the library's ``SparseFeat``; ``models`` maps ``DeepFM``, ``DCN``,
    ``xDeepFM``, ``AutoInt``, ``DCNMix``, ``FiBiNET`` and ``ONN`` to its classes; ``library_kwargs``
    go to every model (e.g. the device), except ``autoint_kwargs``, which go to AutoInt only
    (DeepCTR's AutoInt takes ``att_embedding_size`` and ``l2_reg_linear``, DeepCTR-Torch's neither),
    and ``onn_kwargs``, to ONN only (DeepCTR's ``use_bn``/``reduce_sum``). No L2, no dropout.

    DCN-V2 is DeepCTR's ``DCN`` with ``cross_parameterization="matrix"`` (full-rank ``W_l``; parallel
    structure) or ``DCNMix`` (the low-rank mixture); ONN is DeepCTR's NFFM-style ONN: Hadamard pair
    products of the operation-aware embeddings into the DNN. DeepCTR's DCN, FiBiNET and ONN add a
    first-order (linear) logit; ours has one in FiBiNET only.
    """
    hp = spec["hparams"]
    autoint_kwargs = library_kwargs.pop("autoint_kwargs", {})
    onn_kwargs = library_kwargs.pop("onn_kwargs", {})
    features = [feature_class(name, vocabulary_size=v, embedding_dim=hp["embed_size"])
                for name, v in zip(rows["field_names"], rows["vocab_sizes"])]
    common = dict(dnn_hidden_units=tuple(hp["hidden_units"]), l2_reg_embedding=0.0, l2_reg_dnn=0.0, dnn_dropout=0.0,
                  seed=spec["seed"], task="binary", **library_kwargs)
    name = spec["model"]
    if name == "deepfm":
        return models["DeepFM"](features, features, l2_reg_linear=0.0, **common)
    if name == "dcn":
        return models["DCN"](features, features, cross_num=hp["cross_layers"], cross_parameterization="vector",
                             l2_reg_linear=0.0, l2_reg_cross=0.0, **common)
    if name == "xdeepfm":
        return models["xDeepFM"](features, features, cin_layer_size=tuple(hp["cin_layer_units"]), cin_split_half=True,
                                 cin_activation="linear", l2_reg_linear=0.0, l2_reg_cin=0.0, **common)
    if name == "autoint+":
        return models["AutoInt"](features, features, att_layer_num=hp["attention_layers"],
                                 att_head_num=hp["num_heads"], att_res=True, **autoint_kwargs, **common)
    if name == "dcnv2":  # DCN-V2's full-rank cross layers = DeepCTR's DCN with the matrix parameterisation
        if hp["use_low_rank_mixture"]:
            return models["DCNMix"](features, features, cross_num=hp["cross_layers"], l2_reg_linear=0.0,
                                    l2_reg_cross=0.0, **common)
        return models["DCN"](features, features, cross_num=hp["cross_layers"], cross_parameterization="matrix",
                             l2_reg_linear=0.0, l2_reg_cross=0.0, **common)
    if name == "fibinet":
        kinds = {"field_all": "all", "field_each": "each", "field_interaction": "interaction"}
        return models["FiBiNET"](features, features, bilinear_type=kinds[hp["bilinear_type"]],
                                 reduction_ratio=hp["reduction_ratio"], l2_reg_linear=0.0, **common)
    if name == "onn":
        if hp["product"] != "hadamard":
            raise SystemExit(f"{library} runner: ONN with product={hp['product']!r} is not built by {library}")
        return models["ONN"](features, features, l2_reg_linear=0.0, **onn_kwargs, **common)
    raise SystemExit(f"{library} runner: unknown model {name}")


def load_rows(spec: dict[str, Any]) -> dict[str, Any]:
    """The dumped rows: train (first ``spec['train_rows']`` of the trainer's order) and test.

    Returns ``{"vocab_sizes", "field_names", "train_x" (N, F) int32, "train_y" (N,) float32,
    "test_x", "test_y"}``; field ``j`` holds ids in ``[0, vocab_sizes[j])``.
    """
    data = Path(spec["data_dir"])
    meta = json.loads((data / "meta.json").read_text())
    n = int(spec["train_rows"])
    train_x = np.load(data / "train_sparse.npy", mmap_mode="r")[:n]
    train_y = np.load(data / "train_label.npy", mmap_mode="r")[:n]
    return {
        "vocab_sizes": [int(v) for v in meta["vocab_sizes"]],
        "field_names": list(meta["field_names"]),
        "train_x": np.ascontiguousarray(train_x),
        "train_y": np.ascontiguousarray(train_y, dtype=np.float32),
        "test_x": np.load(data / "test_sparse.npy"),
        "test_y": np.load(data / "test_label.npy").astype(np.float32),
    }


class StepClock:
    """Wall-clock time at the end of every optimiser step (for the steady-state rate)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.rows: list[int] = []

    def tick(self, rows: int) -> None:
        self.times.append(time.perf_counter())
        self.rows.append(int(rows))

    def steady_rows_per_s(self) -> float | None:
        """Rows of steps 2..n divided by the time from the end of step 1 to the end of step n."""
        if len(self.times) < 3:
            return None
        seconds = self.times[-1] - self.times[0]
        return sum(self.rows[1:]) / seconds if seconds > 0 else None


def clock_optimizer(optimizer: Any, batch_size: int, rows: int) -> StepClock:
    """A :class:`StepClock` ticked after every ``optimizer.step()`` (of ``batch_size`` rows, the last
    step the rest of ``rows``): the step clock of a library whose ``fit`` loop we do not own."""
    clock = StepClock()
    step = optimizer.step

    def timed_step(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        clock.tick(min(batch_size, rows - len(clock.times) * batch_size))
        return out

    optimizer.step = timed_step
    return clock


def seed_torch(spec: dict[str, Any]) -> None:
    """Threads and seeds of a torch peer (torch is imported here: the TF runner shares this module)."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])


def start_deepctr_tf(spec: dict[str, Any]) -> Any:
    """The start of a DeepCTR (TF) runner: thread variables, quiet C++ logs and Keras 2 (DeepCTR 0.9.4
    is written for ``tf_keras``) set before TensorFlow is imported here; its thread pools and the
    seeds set after. Returns the ``tensorflow`` module."""
    set_thread_env(spec["threads"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(spec["seed"])
    np.random.seed(spec["seed"])
    return tf


def set_thread_env(threads: int) -> None:
    """Pin the math libraries to ``threads`` threads (must run before torch/TF are imported)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def save_predictions(spec: dict[str, Any], probs: np.ndarray) -> str:
    path = Path(spec["predictions"])
    np.save(path, np.asarray(probs, dtype=np.float64).reshape(-1))
    return str(path)


def emit(result: dict[str, Any]) -> None:
    """Print the one ``RESULT {json}`` line the orchestrator parses."""
    result.setdefault("peak_rss_mb", own_peak_rss_mb())
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def result_base(spec: dict[str, Any], train_rows: int, train_seconds: float, clock: StepClock,
                rss_before_mb: float, **extra: Any) -> dict[str, Any]:
    return {
        "contender": spec["contender"],
        "model": spec["model"],
        "train_rows": int(train_rows),
        "train_seconds": float(train_seconds),
        "rows_per_s": train_rows / train_seconds if train_seconds > 0 else None,
        "steady_rows_per_s": clock.steady_rows_per_s(),
        "steps": len(clock.times),
        "first_step_seconds": (clock.times[0] - clock.start) if clock.times and hasattr(clock, "start") else None,
        "rss_before_train_mb": rss_before_mb,
        **extra,
    }
