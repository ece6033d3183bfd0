"""Training, evaluation and prediction of the PyTorch models.

``Trainer(model, config).fit(store)`` runs the whole recipe: optimiser with parameter groups,
per-epoch validation (AUC, logloss), learning rate x ``lr_factor`` on a validation plateau, early
stopping, best and resumable checkpoints, test metrics of the best weights, ``metrics.json``,
TensorBoard scalars and progress bars.

Regularisation (chosen by module type, never by parameter-name substrings; see
:func:`parameter_groups`):

* ``embedding`` group — the weights of every :class:`~ctrkit.pytorch.layers.EmbeddingTable`: no
  weight decay. Instead a forward hook on each table adds ``embedding_l2 * sum(rows ** 2) / B`` to
  the loss for the rows the batch actually looked up (a row read twice counts twice), so the
  regulariser costs ``O(B)`` per step instead of ``O(vocabulary)``.
* ``no_decay`` group — parameters of norm layers, of ``Bias`` modules, and the ``bias`` of
  ``nn.Linear``/``nn.Conv*``.
* ``decay`` group — everything else, with ``weight_decay``. For Adam, Adagrad and SGD this is the
  classic coupled L2 penalty: the optimiser adds ``weight_decay * w`` to the gradient, exactly the
  gradient of ``weight_decay / 2 * ||w||^2`` added to the loss (it is not added to the reported
  loss). For AdamW it is the decoupled decay of Loshchilov & Hutter (``w -= lr * weight_decay * w``).

Devices and processes: no ``gpu_ids`` -> CPU; one id -> ``cuda:<id>``; several ids (or
``cpu_processes > 1``) -> one process per device started with ``torch.multiprocessing.spawn``,
``DistributedDataParallel`` over NCCL (GPUs) or gloo (CPU), global batch split evenly across ranks.
Started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the trainer joins
the existing ``env://`` group instead of spawning. Rank 0 alone writes files and prints; evaluation
is sharded across ranks and the predictions are gathered, so metrics equal single-process ones.

Checkpoints hold only tensors and plain Python values, are written atomically (temporary file,
fsync, ``os.replace``) and are always loaded with ``torch.load(..., weights_only=True)``. Both
``best.pt`` and ``last.pt`` are dicts with::

    format="ctrkit-torch-checkpoint", version=1, kind="best"|"last", ctrkit_version, torch_version,
    model_name (registry name), hparams (dict given to build_torch_model), schema (Schema.to_dict()),
    config (TrainConfig.to_dict()), model (state_dict, CPU tensors)

``best.pt`` adds ``epoch`` (1-based) and ``valid`` (its validation metrics); ``last.pt`` adds
``optimizer`` and ``scheduler`` state dicts, ``rng`` (torch CPU/CUDA states as uint8 tensors, numpy
MT19937 keys as an int64 tensor plus position/gauss, python's state as a list) and ``progress``
(:class:`Progress`: epoch, batch within the epoch, step, best AUC/epoch, epochs without improvement,
stop reason, history, the epoch's running loss sum and rows, world size).

Determinism: ``--seed`` seeds python, numpy and torch; on CPU the trainer also switches on
``torch.use_deterministic_algorithms(True, warn_only=True)`` (process-wide, without its NaN-filling
of new tensors). Two CPU runs with the same seed and thread count give identical metrics, and a resumed run reproduces the uninterrupted
one exactly: data order is a function of ``(seed, epoch)``, the loader uses its own generator, and
the RNG states are restored at the step where ``last.pt`` was written. Under DDP every rank holds
the same RNG state (same seed, same number of draws), so rank 0's is the one saved.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ctrkit import __version__
from ctrkit.config import TrainConfig
from ctrkit.data.batches import BatchReader
from ctrkit.data.store import Store
from ctrkit.errors import ConfigError, InputError, StoreError
from ctrkit.metrics import binary_metrics
from ctrkit.pytorch.layers import Bias, EmbeddingTable
from ctrkit.pytorch.loader import make_loader, to_tensors
from ctrkit.runtime import busy_cores_advice, keep_freed_memory
from ctrkit.schema import Schema

CHECKPOINT_FORMAT = "ctrkit-torch-checkpoint"
CHECKPOINT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.json"

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_BIASED_TYPES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_OPTIMIZERS = {
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "Adagrad": torch.optim.Adagrad,
    "SGD": torch.optim.SGD,
}


# ---------------------------------------------------------------------------------------------
# Parameter groups and optimiser
# ---------------------------------------------------------------------------------------------
def parameter_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Split trainable parameters into ``decay``, ``no_decay`` and ``embedding`` groups by module type.

    Returns optimiser parameter groups (empty groups left out), each with a ``name`` key.
    """
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "embedding": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            groups[_group_of(module, name)].append(param)
    decay = {"decay": weight_decay, "no_decay": 0.0, "embedding": 0.0}
    return [{"name": k, "params": v, "weight_decay": decay[k]} for k, v in groups.items() if v]


def _group_of(module: nn.Module, param_name: str) -> str:
    if isinstance(module, EmbeddingTable):
        return "embedding"
    if isinstance(module, _NORM_TYPES) or isinstance(module, Bias):
        return "no_decay"
    if param_name == "bias" and isinstance(module, _BIASED_TYPES):
        return "no_decay"
    return "decay"


def initialise_weights(model: nn.Module, scheme: str) -> None:
    """Apply an initialisation ``scheme`` (``TrainConfig.init``) to the model's Linear/Conv1d layers.

    ``xavier_normal`` keeps what the models built (Xavier normal weights, zero biases: FuxiCTR's
    and the BARS benchmark's recipe). ``torch_default`` re-draws every ``nn.Linear``/``nn.Conv1d``
    with PyTorch's own default (Kaiming uniform with ``a = sqrt(5)``, uniform biases), the
    initialisation torch-rechub and DeepCTR-Torch give their MLPs; embeddings and the models' other
    parameters keep theirs. Uses the global torch RNG (seeded by the trainer).
    """
    if scheme == "xavier_normal":
        return
    if scheme != "torch_default":
        raise ConfigError(f"unknown initialisation {scheme!r}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.Linear.reset_parameters(module)  # torch's own, even for a subclass with its own reset
        elif isinstance(module, nn.Conv1d):
            nn.Conv1d.reset_parameters(module)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimiser over :func:`parameter_groups` (fused kernels where available)."""
    cls = _OPTIMIZERS[config.optimizer]
    groups = parameter_groups(model, config.weight_decay)
    params = [p for g in groups for p in g["params"]]
    kwargs: dict[str, Any] = {"lr": config.lr}
    if params and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
        kwargs["fused"] = True  # one kernel per step for all tensors; ~10x faster on CPU
    return cls(groups, **kwargs)


# ---------------------------------------------------------------------------------------------
# Seeds and RNG state
# ---------------------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and python as tensors and plain lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: a temporary file in the same directory, fsync, ``os.replace``.

    A reader therefore sees the previous complete file or the new complete file, never a torn one,
    even if the process is killed while writing.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or ``best.pt`` inside a ``model_save_dir``."""
    path = Path(path)
    return path / BEST if path.is_dir() else path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint (tensors on CPU) with ``weights_only=True``; clear errors for bad files."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise InputError(f"{path} is not a readable ctrkit checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a ctrkit PyTorch checkpoint")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise InputError(f"{path} has checkpoint version {payload['version']}, newer than this ctrkit reads")
    return payload


# ---------------------------------------------------------------------------------------------
# Devices and process groups
# ---------------------------------------------------------------------------------------------
def check_gpu_ids(gpu_ids: list[int]) -> None:
    """ConfigError unless every id names a visible CUDA device."""
    if not gpu_ids:
        return
    shown = ",".join(str(i) for i in gpu_ids)
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--gpu_ids {shown}: no GPU is visible (CUDA is not available); omit --gpu_ids to train on CPU"
        )
    count = torch.cuda.device_count()
    missing = [i for i in gpu_ids if i >= count]
    if missing:
        visible = ", ".join(f"{i} ({torch.cuda.get_device_name(i)})" for i in range(count)) or "none"
        raise ConfigError(
            f"--gpu_ids {shown}: no GPU {','.join(map(str, missing))}; visible GPUs: {visible}"
        )


@dataclass
class ProcessContext:
    """Where this process runs: its rank in the group and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by torchrun with more than one process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0))


def _device_for(config: TrainConfig, local_rank: int) -> torch.device:
    if not config.gpu_ids:
        return torch.device("cpu")
    if local_rank >= len(config.gpu_ids):
        raise ConfigError(
            f"--gpu_ids {','.join(map(str, config.gpu_ids))}: local rank {local_rank} has no GPU "
            "(give one id per process)"
        )
    return torch.device("cuda", config.gpu_ids[local_rank])


def _spawn_entry(rank: int, model: nn.Module, config: TrainConfig, store_path: str, port: int) -> None:
    """Body of one process started by :meth:`Trainer.fit` through ``torch.multiprocessing.spawn``.

    The rendezvous store is served by the launching process (``port``), not by rank 0, so no rank
    depends on another one still being alive while it shuts its process group down.
    """
    world = config.world_size
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    device = _device_for(config, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rendezvous = dist.TCPStore("127.0.0.1", port, world_size=world, is_master=False)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=rendezvous, rank=rank, world_size=world)
    # the model arrives in shared memory, one storage for all ranks: give this rank its own copy
    model = copy.deepcopy(model)
    Trainer(model, config)._run(Store(store_path), (rank, world, rank))
    _close_group(device)


def _close_group(device: torch.device) -> None:
    """Leave the process group after a successful run: wait for every rank, then destroy it."""
    gc.collect()  # drop DDP reducers that still refer to the group
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Training state
# ---------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Counters saved in ``last.pt``: where training is, and the early-stopping bookkeeping."""

    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already trained on (per rank)
    step: int = 0  # optimiser steps since the start
    best_auc: float = -math.inf
    best_epoch: int = 0  # 1-based; 0 = none yet
    bad_epochs: int = 0
    stopped: str = ""  # "", "early_stopping"
    epoch_loss_rows: int = 0
    history: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Fit, evaluate and predict with one model.

    Args:
        model: a pure model, ``model(batch) -> logits [B]``.
        config: the training options (validated here). ``config.model`` and ``config.hparams()``
            are written to checkpoints so that :meth:`from_checkpoint` can rebuild the model.
        schema: the schema the model was built for (taken from the store by :meth:`fit`).

    Example::

        store = Store("s.lmdb")
        model, _ = build_torch_model("deepfm", store.schema, {"embed_size": 8})
        trainer = Trainer(model, TrainConfig(model="deepfm", epochs=3, embed_size=8,
                                             model_save_dir="runs/deepfm"))
        metrics = trainer.fit(store)           # best weights loaded at the end
        probs = trainer.predict(BatchReader(store, "test", 4096))
        Trainer.from_checkpoint("runs/deepfm").evaluate(store, "test")
    """

    def __init__(self, model: nn.Module, config: TrainConfig, *, schema: Schema | None = None):
        self.config = config.validate()
        self.model = model
        self.schema = schema
        self.hparams = config.hparams()
        self.ctx = ProcessContext()
        if config.gpu_ids:
            check_gpu_ids(config.gpu_ids)
            self.ctx.device = torch.device("cuda", config.gpu_ids[0])  # a rank picks its own in _run
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.progress = Progress()
        self.step_hook: Callable[[int], None] | None = None  # called after every step (tests)
        self._train_model: nn.Module = model  # the DDP wrapper while training distributed
        self._hooks: list[Any] = []
        self._reg_terms: list[torch.Tensor] = []
        self._collect_reg = False
        self._writer = None
        self._epoch_loss_sum = torch.zeros((), dtype=torch.float64)  # BCE * rows of the epoch so far

    # -- construction from a checkpoint ------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **overrides: Any) -> "Trainer":
        """Rebuild model and trainer from a checkpoint file (or a dir holding ``best.pt``).

        ``overrides`` replace training options, e.g. ``gpu_ids=[]`` or ``eval_batch_size=8192``;
        the device options default to CPU in a single process.
        """
        from ctrkit.registry import build_torch_model

        payload = load_checkpoint(path)
        schema = Schema.from_dict(payload["schema"])
        model, _ = build_torch_model(payload["model_name"], schema, dict(payload["hparams"]))
        model.load_state_dict(payload["model"])
        options = {**payload["config"], "gpu_ids": [], "cpu_processes": 0, "resume": False, **overrides}
        config = TrainConfig.from_dict(options, strict=False)
        trainer = cls(model, config, schema=schema)
        trainer.hparams = dict(payload["hparams"])
        return trainer

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    # -- public API --------------------------------------------------------------------------
    def fit(self, store: Store | str | os.PathLike) -> dict[str, Any]:
        """Train on ``store`` (splits ``train``, ``valid``, optional ``test``); returns the metrics.

        Spawns one process per device when the config asks for several (unless already inside a
        torchrun group); the returned metrics are then read back from ``metrics.json``.
        """
        store = store if isinstance(store, Store) else Store(store)
        env = torchrun_env()
        if env is None and self.config.world_size > 1:
            return self._spawn(store)
        return self._run(store, env)

    def evaluate(self, store: Store | str | os.PathLike, split: str = "test") -> dict[str, Any]:
        """AUC, logloss, rows and observed CTR of the current weights on one split."""
        store = store if isinstance(store, Store) else Store(store)
        self._check_schema(store)
        if not store.split(split).labeled:
            raise StoreError(f"split {split!r} of {store.path} has no labels; use `ctrkit predict`")
        self.model.to(self.device)
        probs, labels = self._predict_split(store, split)
        return {"split": split, **binary_metrics(labels, probs)}

    def predict(self, batches: BatchReader | Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities (float64 ``[N]``) for a reader's epoch 0 or any iterable of batches."""
        self.model.to(self.device)
        iterable = batches.iter_epoch(0) if isinstance(batches, BatchReader) else batches
        probs = [self._predict_batch(self._to_device(_as_tensors(b))) for b in iterable]
        if not probs:
            return np.zeros(0)
        return torch.cat(probs).double().cpu().numpy()

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, bce)`` of one batch in training mode: the objective adds the embedding term."""
        self._install_hooks()
        self._reg_terms.clear()
        self._collect_reg = True
        try:
            with self._autocast():
                logits = self._train_model(batch)
        finally:
            self._collect_reg = False
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        objective = bce
        if self._reg_terms:
            rows = batch["label"].shape[0]
            objective = bce + self.config.embedding_l2 * torch.stack(self._reg_terms).sum() / rows
            self._reg_terms.clear()
        return objective, bce

    # -- embedding regulariser ----------------------------------------------------------------
    def _install_hooks(self) -> None:
        if self._hooks or self.config.embedding_l2 <= 0:
            return
        for module in self.model.modules():
            if isinstance(module, EmbeddingTable):
                self._hooks.append(module.register_forward_hook(self._embedding_hook))

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _embedding_hook(self, module: nn.Module, inputs: Any, rows: torch.Tensor) -> None:
        if self._collect_reg:
            self._reg_terms.append(rows.float().pow(2).sum())

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, store: Store) -> dict[str, Any]:
        import torch.multiprocessing as mp

        self._remove_hooks()  # hooks refer to this trainer; children install their own
        self.model.cpu()
        # this process serves the rendezvous store on a port the OS picks (no race for a free port)
        rendezvous = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False)
        try:
            mp.spawn(
                _spawn_entry,
                args=(self.model, self.config, str(store.path), rendezvous.port),
                nprocs=self.config.world_size,
                join=True,
            )
        except mp.ProcessRaisedException as exc:
            _reraise_user_error(str(exc))
            raise
        finally:
            del rendezvous
        best = self.config.save_dir / BEST
        if best.is_file():
            self.model.load_state_dict(load_checkpoint(best)["model"])
        return json.loads((self.config.save_dir / METRICS).read_text())

    def _run(self, store: Store, env: tuple[int, int, int] | None) -> dict[str, Any]:
        """Train in this process (a rank of a group when ``env`` is given)."""
        created_group = False
        if env is not None:
            rank, world, local_rank = env
            self.ctx = ProcessContext(rank, world, local_rank, _device_for(self.config, local_rank))
            if self.ctx.device.type == "cuda":
                torch.cuda.set_device(self.ctx.device)
            if not dist.is_initialized():
                backend = "nccl" if self.ctx.device.type == "cuda" else "gloo"
                dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
                created_group = True
        try:
            metrics = self._train(store)
            if created_group:
                _close_group(self.ctx.device)
            return metrics
        finally:
            if created_group and dist.is_initialized():  # after an error: no barrier, it could hang
                dist.destroy_process_group()
            if env is not None:  # evaluate/predict after fit run in this process alone
                self.ctx = ProcessContext(device=self.ctx.device)

    def _setup_process(self) -> None:
        keep_freed_memory()
        threads = self.config.threads
        if not threads and self.ctx.distributed and self.ctx.device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.ctx.world_size))
            threads = max(1, (os.cpu_count() or 1) // local)  # no oversubscription of the cores
        if threads:
            torch.set_num_threads(threads)
        elif self.ctx.device.type == "cpu" and not self.ctx.distributed:
            self._note_busy_cores()

    def _note_busy_cores(self) -> None:
        """Pass on :func:`ctrkit.runtime.busy_cores_advice` when ``--threads`` was left to torch."""
        advice = busy_cores_advice(torch.get_num_threads())
        if advice:
            self._log(advice)

    def _barrier(self) -> None:
        if self.ctx.distributed:
            if self.ctx.device.type == "cuda":
                dist.barrier(device_ids=[self.ctx.device.index])
            else:
                dist.barrier()

    def _broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. a checkpoint read from rank 0's disk)."""
        if not self.ctx.distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0, device=self.ctx.device if self.ctx.device.type == "cuda" else None)
        return holder[0]

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    # -- the training run ------------------------------------------------------------------------
    def _train(self, store: Store) -> dict[str, Any]:
        cfg, ctx = self.config, self.ctx
        self._setup_process()
        set_seed(cfg.seed)
        if ctx.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
            # deterministic mode also NaN-fills every new tensor (a debugging aid for reads of
            # uninitialised memory): a few % of a bf16 step; every kernel here writes its output
            torch.utils.deterministic.fill_uninitialized_memory = False
        self._check_schema(store)
        for split in ("train", "valid"):
            store.split(split)
        initialise_weights(self.model, cfg.init)  # before a resume restores the saved weights
        model = self.model.to(ctx.device)
        self._install_hooks()
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, threshold=0.0
        )
        self.progress = Progress()
        self._epoch_loss_sum = torch.zeros((), dtype=torch.float64)
        if cfg.resume:
            self._restore(cfg.save_dir / LAST)
        self._train_model = self._wrap_ddp(store) if ctx.distributed else model
        reader = BatchReader(
            store, "train", cfg.batch_size // ctx.world_size, shuffle=True, seed=cfg.seed,
            rank=ctx.rank, world_size=ctx.world_size, even_shards=True, drop_last=False,
        )
        if ctx.is_main:
            cfg.save_dir.mkdir(parents=True, exist_ok=True)
            self._writer = _summary_writer(cfg.save_dir / "tensorboard", self.progress.step if cfg.resume else None)
        try:
            stopped, rows_per_s = self._epochs(store, reader)
            return self._finish(store, stopped, rows_per_s)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._train_model = self.model

    def _wrap_ddp(self, store: Store) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        unused = self._unused_parameters(store)
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return DDP(self.model, device_ids=device_ids, find_unused_parameters=bool(unused))

    def _unused_parameters(self, store: Store) -> list[str]:
        """Names of parameters that get no gradient (DDP must then look for unused ones each step).

        Found with one forward/backward in eval mode (no dropout draws, no BatchNorm statistics
        updated), so the probe changes neither the RNG stream nor the model.
        """
        batch = next(BatchReader(store, "train", 8).iter_epoch(0))
        was_training = self.model.training
        self.model.eval()
        self.model(self._to_device(to_tensors(batch))).float().sum().backward()
        unused = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        return unused

    def _epochs(self, store: Store, reader: BatchReader) -> tuple[str, float]:
        """Train epoch after epoch; returns why training stopped and the mean training rows/s."""
        cfg, progress = self.config, self.progress
        if progress.stopped:
            return progress.stopped, 0.0
        rows_total, seconds_total = 0, 0.0
        while progress.epoch < cfg.epochs:
            completed, rows, seconds, train_loss = self._train_epoch(reader)
            rows_total, seconds_total = rows_total + rows, seconds_total + seconds
            if not completed:
                return "max_steps", rows_total / max(seconds_total, 1e-9)
            self._end_epoch(store, train_loss, rows / max(seconds, 1e-9), seconds)
            if progress.stopped:
                break
            if cfg.max_steps and progress.step >= cfg.max_steps:
                progress.stopped = "max_steps"
                break
        return progress.stopped or "completed", rows_total / max(seconds_total, 1e-9)

    def _train_epoch(self, reader: BatchReader) -> tuple[bool, int, float, float]:
        """One (possibly resumed) epoch; returns (completed, rows, seconds, mean train loss)."""
        cfg, ctx, progress = self.config, self.ctx, self.progress
        model = self._train_model
        model.train()
        total = len(reader)
        loader = make_loader(reader, progress.epoch, progress.batch, cfg.num_workers, ctx.device.type == "cuda")
        bar = _progress_bar(total, progress.batch, f"epoch {progress.epoch + 1}/{cfg.epochs}", ctx.is_main)
        self._epoch_loss_sum = loss_sum = self._epoch_loss_sum.to(ctx.device)  # updated in place
        rows, last_logged, start = 0, progress.batch, time.perf_counter()
        try:
            for batch in loader:
                batch = self._to_device(batch)
                loss = self._step(batch)
                n = batch["label"].shape[0]
                loss_sum.add_(loss, alpha=n)  # float64 accumulator, no host sync
                rows += n
                progress.epoch_loss_rows += n
                progress.step += 1
                progress.batch += 1
                if progress.step % cfg.log_every == 0:
                    self._log_step(bar, loss, progress.batch - last_logged, rows, start)
                    last_logged = progress.batch
                if self.step_hook is not None:
                    self.step_hook(progress.step)
                if cfg.max_steps and progress.step >= cfg.max_steps and progress.batch < total:
                    self._save_last()
                    return False, rows * ctx.world_size, time.perf_counter() - start, float("nan")
                if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 and progress.batch < total:
                    self._save_last()
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        loss_sum, loss_rows = self._reduce_sum(loss_sum), self._reduce_sum(progress.epoch_loss_rows)
        return True, rows * ctx.world_size, seconds, float(loss_sum) / max(float(loss_rows), 1.0)

    def _step(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One optimiser step; returns the batch's BCE (detached, on device, no host sync)."""
        objective, bce = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        return bce.detach()

    def _end_epoch(self, store: Store, train_loss: float, rows_per_s: float, seconds: float) -> None:
        """Validate, update best/plateau/early-stopping state, log, checkpoint."""
        cfg, progress = self.config, self.progress
        valid = self._evaluate_distributed(store, "valid")
        lr = self.optimizer.param_groups[0]["lr"]
        epoch = progress.epoch + 1
        improved = valid["auc"] > progress.best_auc  # False for nan
        if improved:
            progress.best_auc, progress.best_epoch, progress.bad_epochs = valid["auc"], epoch, 0
        else:
            progress.bad_epochs += 1
        self.scheduler.step(valid["auc"])
        record = {
            "epoch": epoch, "steps": progress.step, "train_loss": train_loss, "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"], "lr": lr, "seconds": round(seconds, 3),
            "rows_per_s": round(rows_per_s, 1), "improved": bool(improved),
        }
        progress.history.append(record)
        progress.epoch, progress.batch, progress.epoch_loss_rows = epoch, 0, 0
        self._epoch_loss_sum = torch.zeros((), dtype=torch.float64)
        if progress.bad_epochs >= max(cfg.patience, 1):
            progress.stopped = "early_stopping"
        self._log(
            f"epoch {epoch}/{cfg.epochs}  train_loss {train_loss:.5f}  valid_auc {valid['auc']:.5f}  "
            f"valid_logloss {valid['logloss']:.5f}  lr {lr:.3g}  {rows_per_s:,.0f} rows/s  {seconds:.1f}s"
            + ("  *best*" if improved else "") + ("  early stop" if progress.stopped else "")
        )
        self._scalars({"valid/auc": valid["auc"], "valid/logloss": valid["logloss"], "train/epoch_loss": train_loss,
                       "train/lr": lr, "train/rows_per_s": rows_per_s}, epoch)
        if improved:
            self._save_best(epoch, valid)
        self._save_last()
        self._write_metrics(self._summary("running", 0.0, None))

    def _finish(self, store: Store, stopped: str, rows_per_s: float) -> dict[str, Any]:
        """Test metrics of the best weights; final ``metrics.json``."""
        self._load_best()
        test = None
        if "test" in store.splits and store.splits["test"].labeled and store.splits["test"].rows:
            test = self._evaluate_distributed(store, "test")
            self._log(f"test (best epoch {self.progress.best_epoch}): auc {test['auc']:.5f}  "
                      f"logloss {test['logloss']:.5f}")
            self._scalars({"test/auc": test["auc"], "test/logloss": test["logloss"]}, self.progress.best_epoch)
        summary = self._summary(stopped, rows_per_s, test)
        self._write_metrics(summary)
        return summary

    # -- per-step helpers ------------------------------------------------------------------------
    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.ctx.device.type == "cpu":
            return dict(batch)
        return {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _log_step(self, bar, loss: torch.Tensor, batches: int, rows: int, start: float) -> None:
        """Every ``log_every`` steps: one host sync for the bar's loss and TensorBoard."""
        if bar.disable and self._writer is None:
            return
        value = float(loss)
        speed = rows * self.ctx.world_size / max(time.perf_counter() - start, 1e-9)
        bar.update(batches)
        bar.set_postfix(loss=f"{value:.4f}", rows_s=f"{speed:,.0f}", refresh=False)
        self._scalars({"train/loss": value}, self.progress.step)

    def _reduce_sum(self, value: torch.Tensor | int) -> float:
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self.ctx.device)
        if self.ctx.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return float(tensor)

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def _predict_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            return torch.sigmoid(self.model(batch).float())

    def _predict_split(self, store: Store, split: str) -> tuple[np.ndarray, np.ndarray]:
        """This rank's shard of ``split`` (in store order): probabilities and labels."""
        ctx = self.ctx
        reader = BatchReader(store, split, self._eval_batch_size(), rank=ctx.rank, world_size=ctx.world_size)
        loader = make_loader(reader, 0, 0, self.config.num_workers, ctx.device.type == "cuda")
        probs, labels = [], []
        for batch in loader:
            batch = self._to_device(batch)
            probs.append(self._predict_batch(batch))
            labels.append(batch["label"])
        empty = torch.zeros(0, device=ctx.device)
        p = torch.cat(probs) if probs else empty
        y = torch.cat(labels).float() if labels else empty
        if ctx.distributed:
            p, y = _gather_padded(p), _gather_padded(y)
        return p.double().cpu().numpy(), y.double().cpu().numpy()

    def _evaluate_distributed(self, store: Store, split: str) -> dict[str, Any]:
        """Metrics of a split, evaluated in shards by all ranks and gathered (same on every rank)."""
        was_training = self._train_model.training
        probs, labels = self._predict_split(store, split)
        self._train_model.train(was_training)
        return binary_metrics(labels, probs)

    def _check_schema(self, store: Store) -> None:
        if self.schema is None:
            self.schema = store.schema
        elif self.schema.to_dict() != store.schema.to_dict():
            raise StoreError(
                f"store {store.path} has a different schema (fields or vocabulary sizes) from the one "
                "this model was trained on; use the store the model was trained with"
            )

    # -- checkpoints ---------------------------------------------------------------------------
    def _payload(self, kind: str) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": kind,
            "ctrkit_version": __version__,
            "torch_version": str(torch.__version__),
            "model_name": self.config.model,
            "hparams": self.hparams,
            "schema": self.schema.to_dict(),
            "config": self.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }

    def _save_last(self) -> None:
        """``last.pt``: everything needed to continue exactly from this step (called on all ranks).

        The running loss of the epoch is saved summed over ranks; on resume rank 0 carries it.
        """
        loss_sum = self._reduce_sum(self._epoch_loss_sum)
        loss_rows = self._reduce_sum(self.progress.epoch_loss_rows)
        if self.ctx.is_main:
            payload = self._payload("last")
            progress = asdict(self.progress)
            progress["epoch_loss_sum"] = torch.tensor(loss_sum, dtype=torch.float64)
            progress["epoch_loss_rows"] = int(loss_rows)
            progress["world_size"] = self.ctx.world_size
            payload.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                           progress=progress, rng=rng_state())
            save_checkpoint(self.config.save_dir / LAST, payload)
        self._barrier()

    def _save_best(self, epoch: int, valid: Mapping[str, Any]) -> None:
        if self.ctx.is_main:
            payload = self._payload("best")
            payload.update(epoch=epoch, valid={k: float(v) for k, v in valid.items()})
            save_checkpoint(self.config.save_dir / BEST, payload)
        self._barrier()

    def _restore(self, path: Path) -> None:
        """Continue from ``last.pt``: weights, optimiser, scheduler, counters and RNG states."""
        payload = self._broadcast_object(load_checkpoint(path) if self.ctx.is_main else None)
        self._check_resumable(payload, path)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        saved = dict(payload["progress"])
        loss_sum = saved.pop("epoch_loss_sum").double()
        saved.pop("world_size", None)
        if not self.ctx.is_main:  # rank 0 carries the ranks' summed running loss
            loss_sum, saved["epoch_loss_rows"] = torch.zeros_like(loss_sum), 0
        self._epoch_loss_sum = loss_sum
        self.progress = Progress(**saved)
        set_rng_state(payload["rng"])
        p = self.progress
        self._log(f"resumed from {path}: epoch {p.epoch + 1}, batch {p.batch}, step {p.step}")

    def _check_resumable(self, payload: Mapping[str, Any], path: Path) -> None:
        old = payload["config"]
        if payload["model_name"] != self.config.model:
            raise ConfigError(
                f"--resume: {path} holds a {payload['model_name']} model, not --model {self.config.model}"
            )
        if dict(payload["hparams"]) != self.hparams:
            raise ConfigError(
                f"--resume: {path} was trained with hyper-parameters {dict(payload['hparams'])}, not {self.hparams}"
            )
        for flag in ("batch_size", "seed", "optimizer"):
            if old.get(flag) != getattr(self.config, flag):
                raise ConfigError(
                    f"--resume: {path} was trained with --{flag} {old.get(flag)}, not {getattr(self.config, flag)}"
                )
        world = payload["progress"].get("world_size", 1)
        if payload["progress"]["batch"] and world != self.ctx.world_size:
            raise ConfigError(
                f"--resume: {path} stopped inside an epoch with {world} process(es); resume it with the same number"
            )
        if payload["schema"] != self.schema.to_dict():
            raise ConfigError(f"--resume: {path} was trained on a store with a different schema than --data")

    def _load_best(self) -> None:
        """Best weights (from ``best.pt``) into the model on every rank; current weights if none."""
        path = self.config.save_dir / BEST
        state = None
        if self.progress.best_epoch and self.ctx.is_main and path.is_file():
            state = load_checkpoint(path)["model"]
        state = self._broadcast_object(state)
        if state is not None:
            self.model.load_state_dict(state)

    # -- metrics.json -----------------------------------------------------------------------------
    def _summary(self, stopped: str, rows_per_s: float, test: Mapping[str, Any] | None) -> dict[str, Any]:
        progress = self.progress
        best = next((h for h in progress.history if h["epoch"] == progress.best_epoch), None)
        return {
            "model": self.config.model,
            "hparams": self.hparams,
            "stopped": stopped,
            "epochs_run": len(progress.history),
            "steps": progress.step,
            "best_epoch": progress.best_epoch,
            "best_valid": None if best is None else {"auc": best["valid_auc"], "logloss": best["valid_logloss"]},
            "test": None if test is None else dict(test),
            "rows_per_s": round(rows_per_s, 1),
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "history": progress.history,
            "config": self.config.to_dict(),
        }

    def _write_metrics(self, summary: Mapping[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        path = self.config.save_dir / METRICS
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(json_safe(summary), indent=2) + "\n")
        os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _as_tensors(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if all(isinstance(v, torch.Tensor) for v in batch.values()):
        return dict(batch)
    return to_tensors({k: np.asarray(v) for k, v in batch.items()})


def _reraise_user_error(text: str) -> None:
    """Re-raise a ctrkit user error that ended a spawned process as itself, without the traceback."""
    import re

    import ctrkit.errors as errors

    for line in reversed(text.strip().splitlines()):
        match = re.match(r"ctrkit\.errors\.(\w+): (.*)", line.strip())
        if match and isinstance(getattr(errors, match.group(1), None), type):
            raise getattr(errors, match.group(1))(match.group(2)) from None


def _gather_padded(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length from every rank, in rank order."""
    world = dist.get_world_size()
    length = torch.tensor([tensor.numel()], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(n) for n in lengths]
    padded = torch.zeros(max(sizes), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def _progress_bar(total: int, initial: int, desc: str, main: bool):
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal, so logs stay clean
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=None if main else True,
                leave=False, dynamic_ncols=True, file=sys.stderr)


def _summary_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        print("warning: tensorboard is not installed; no TensorBoard logs", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def json_safe(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Entry point used by `ctrkit train`
# ---------------------------------------------------------------------------------------------
def train_from_config(config: TrainConfig, *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check everything that can be checked, build the model and train it.

    All user errors (bad GPU ids, missing or incomplete store, unknown model, bad hyper-parameter
    values, ``--resume`` without ``last.pt``) are raised before a file is written.
    """
    from ctrkit.registry import build_torch_model

    config.validate()
    if not config.data:
        raise ConfigError("--data STORE is required (a store built by `ctrkit preprocess`)")
    env = torchrun_env()
    check_gpu_ids(config.gpu_ids)
    if env is not None and config.batch_size % env[1]:
        raise ConfigError(f"--batch_size {config.batch_size} must be divisible by the number of processes ({env[1]})")
    try:
        store = Store(config.data)
    except StoreError as exc:
        raise StoreError(f"--data: {exc}") from None
    for split in ("train", "valid"):
        if split not in store.splits or not store.splits[split].labeled:
            raise StoreError(f"--data: store {store.path} has no labeled {split!r} split, which training needs")
    main_process = env is None or env[0] == 0
    if config.resume and main_process and not (config.save_dir / LAST).is_file():  # rank 0 reads it
        raise ConfigError(f"--resume: no checkpoint to resume from at {config.save_dir / LAST}")
    set_seed(config.seed)
    model, ignored = build_torch_model(config.model, store.schema, config.hparams())
    if ignored and warn is not None and main_process:
        flags = ", ".join(f"--{k}" if hasattr(config, k) else f"--model_args {k}" for k in ignored)
        warn(f"warning: {config.model} does not use {flags}; ignored")
    return Trainer(model, config, schema=store.schema).fit(store)
