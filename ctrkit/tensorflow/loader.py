"""TensorFlow input pipeline: a :class:`~ctrkit.data.batches.BatchReader` behind a ``tf.data.Dataset``.

The reader is the only place where rows become batches (chunk order, shuffling windows, shards,
the short last batch, resuming at ``start_batch``); this module only hands its numpy batches to
TensorFlow, so ``make_dataset(reader, epoch, start_batch)`` yields exactly the batches of
``reader.iter_epoch(epoch, start_batch=start_batch)``, in the same order, as tensors::

    label       float32 [B]            (labeled splits)
    sparse      int32   [B, n_sparse]
    dense       float32 [B, n_dense]
    seq:<name>  int32   [B, max_len]

``B`` is ``None`` in the dataset's ``element_spec`` since the last batch of an epoch may be short.

Design and speed (``benchmarks/bench_tf_loader.py``): one ``Dataset.from_generator`` over the
reader, one element per batch, then ``prefetch``. The generator runs in a tf.data thread, so
reading the next batch overlaps with the training step. Handing a batch to TensorFlow costs
about 1 ms of CPU per 4096-row batch beyond the reader's own work (the Python call into
TensorFlow, one copy of the batch into a tensor, and the page faults of that fresh buffer), so
the pipeline delivers about half the reader's rows/s. Yielding stacks of batches, or whole
shuffling windows cut with ``tf.gather`` in the graph, was measured and was not faster: every
extra stage adds a copy of the rows. The pipeline gets a private thread pool of one thread
(``private_threads``): the generator is sequential, and on a small shared CPU a wider pool
mostly spins.

Distributed training (:func:`make_distributed_dataset`): with ``R`` replicas in sync, a global
batch of ``G`` rows is the union of ``R`` per-replica batches of ``G / R`` rows, and replica ``r``
reads ``BatchReader(..., batch_size=G / R, rank=r, world_size=R, even_shards=True)``: the
contiguous shard that rank ``r`` of a PyTorch ``DistributedDataParallel`` run of the same
global batch reads. The rows a replica sees at each step are therefore the same in both
frameworks (the single-device batch sequence of ``BatchReader(G)`` is a different one, as in
PyTorch). Under ``MultiWorkerMirroredStrategy`` each worker builds the readers of its own
replicas only (``tf.distribute.InputContext``), so no row is read twice; a worker that holds
the reader of its own shard (the training loop's, ``rank``/``world_size`` of the workers) gets
the global one back with :func:`global_reader`. With one replica per worker, worker ``w`` then
reads exactly the loop's reader: shard ``w`` of ``W``, ``G / W`` rows a step.

Example::

    reader = BatchReader("criteo.lmdb", "train", 4096, shuffle=True, seed=2018)
    for batch in make_dataset(reader, epoch=0):
        batch["sparse"]          # tf.Tensor (4096, 39) int32
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from ctrkit.data.batches import BatchReader
from ctrkit.errors import ConfigError, StoreError
from ctrkit.schema import Schema

TensorBatch = dict[str, tf.Tensor]

# the dtype each batch key has in TensorFlow; ids are int32 as in the batch contract
_FLOAT_KEYS = ("label", "dense")


def to_tensors(batch: dict[str, np.ndarray]) -> TensorBatch:
    """numpy batch -> TensorFlow tensors (one copy per array; TensorFlow owns its buffers)."""
    return {key: tf.convert_to_tensor(_contract_dtype(key, array)) for key, array in batch.items()}


def batch_signature(schema: Schema, *, labeled: bool = True, columns: tuple[str, ...] | None = None) -> dict[str, tf.TensorSpec]:
    """``tf.TensorSpec`` of each batch key of ``schema``, with a ``None`` batch dimension.

    Args:
        schema: the store's fields.
        labeled: whether the split has a ``label`` column.
        columns: the reader's column selection (``None``: every column).
    """
    spec: dict[str, tf.TensorSpec] = {}
    if labeled:
        spec["label"] = tf.TensorSpec([None], tf.float32, name="label")
    if schema.sparse:
        spec["sparse"] = tf.TensorSpec([None, len(schema.sparse)], tf.int32, name="sparse")
    if schema.dense:
        spec["dense"] = tf.TensorSpec([None, len(schema.dense)], tf.float32, name="dense")
    for field in schema.sequence:
        key = f"seq:{field.name}"
        spec[key] = tf.TensorSpec([None, field.max_len], tf.int32, name=f"seq_{field.name}")
    if columns is not None:
        spec = {key: value for key, value in spec.items() if key in columns}
    return spec


def reader_signature(reader: BatchReader) -> dict[str, tf.TensorSpec]:
    """The :func:`batch_signature` of the batches ``reader`` yields, with ``group`` int64 ``[B]``
    when the split's rows carry one (the per-row group id of gAUC; seen on its first row)."""
    spec = batch_signature(reader.store.schema, labeled=reader.info.labeled, columns=reader.columns)
    wanted = reader.columns is None or "group" in reader.columns
    if wanted and reader.store.carries_groups(reader.split):
        spec["group"] = tf.TensorSpec([None], tf.int64, name="group")
    return spec


def make_dataset(
    reader: BatchReader,
    epoch: int = 0,
    start_batch: int = 0,
    prefetch: int | None = tf.data.AUTOTUNE,
    private_threads: int | None = 1,
) -> tf.data.Dataset:
    """A dataset yielding the reader's batches of ``epoch`` from ``start_batch`` on, as tensors.

    Args:
        reader: the (sharded) batch reader of one split.
        epoch: selects the shuffle order.
        start_batch: first batch to yield (resume in the middle of an epoch).
        prefetch: batches read ahead (``tf.data.AUTOTUNE``: tuned by tf.data; ``None`` or 0: none).
        private_threads: size of the dataset's private thread pool (``None``: TensorFlow's shared
            inter-op pool).

    Returns:
        a ``tf.data.Dataset`` of dicts of tensors whose cardinality is the number of batches left.
    """
    return _dataset([reader], epoch, start_batch, prefetch, private_threads)


def make_distributed_dataset(
    strategy: tf.distribute.Strategy,
    reader: BatchReader,
    epoch: int = 0,
    start_batch: int = 0,
    prefetch: int | None = tf.data.AUTOTUNE,
    private_threads: int | None = 1,
) -> tf.distribute.DistributedDataset:
    """The reader's global batches split across ``strategy``'s replicas (see the module docstring).

    Args:
        strategy: any ``tf.distribute`` strategy (the default one: a single replica).
        reader: an unsharded reader whose ``batch_size`` is the global batch; it must be
            divisible by ``strategy.num_replicas_in_sync``.
        epoch, start_batch, prefetch, private_threads: as in :func:`make_dataset`; ``start_batch``
            counts global steps.

    Returns:
        a distributed dataset; ``strategy.experimental_local_results`` of an element gives each
        local replica's batch of that step.
    """
    replicas = strategy.num_replicas_in_sync
    if reader.world_size != 1:
        raise ConfigError(
            f"make_distributed_dataset shards the reader itself; give it an unsharded reader "
            f"(world_size 1, got {reader.world_size})"
        )
    if reader.batch_size % replicas:
        raise ConfigError(
            f"batch size {reader.batch_size} must be divisible by the number of replicas ({replicas})"
        )

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local
        readers = [replica_reader(reader, first + j, replicas) for j in range(local)]
        return _dataset(readers, epoch, start_batch, prefetch, private_threads)

    return strategy.distribute_datasets_from_function(dataset_fn)


def global_reader(reader: BatchReader) -> BatchReader:
    """The unsharded reader of the global batch (``batch_size * world_size``) that ``reader``, the
    even shard of one of ``world_size`` workers, is part of (``reader`` itself when unsharded)."""
    if reader.world_size == 1:
        return reader
    if not reader.even_shards:
        raise ConfigError("global_reader needs the reader of an even shard (even_shards=True)")
    return _reader_like(reader, reader.batch_size * reader.world_size, rank=0, world_size=1)


def replica_reader(reader: BatchReader, rank: int, world_size: int) -> BatchReader:
    """``reader`` with batch ``batch_size // world_size`` reading the even shard ``rank`` of ``world_size``."""
    if world_size == 1:
        return reader
    return _reader_like(reader, reader.batch_size // world_size, rank=rank, world_size=world_size)


def _reader_like(reader: BatchReader, batch_size: int, *, rank: int, world_size: int) -> BatchReader:
    """``reader``'s split, order and columns with another batch size and shard (even shards)."""
    return BatchReader(
        reader.store,
        reader.split,
        batch_size,
        shuffle=reader.shuffle,
        seed=reader.seed,
        shuffle_window=reader.shuffle_window,
        drop_last=reader.drop_last,
        rank=rank,
        world_size=world_size,
        even_shards=True,
        columns=reader.columns,
    )


def _dataset(
    readers: list[BatchReader], epoch: int, start_batch: int, prefetch: int | None, private_threads: int | None
) -> tf.data.Dataset:
    """Batch ``s`` of every reader in turn (one reader: its batches), as one dataset."""
    if start_batch < 0:
        raise ConfigError(f"start_batch must be >= 0, got {start_batch}")
    signature = reader_signature(readers[0])
    steps = max(0, len(readers[0]) - start_batch)
    dataset = tf.data.Dataset.from_generator(
        lambda: _interleaved(readers, epoch, start_batch, tuple(signature)), output_signature=signature
    )
    # a known length lets Keras and progress bars count steps; a mismatch raises instead of hiding
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps * len(readers)))
    if prefetch:
        dataset = dataset.prefetch(prefetch)
    options = tf.data.Options()
    options.deterministic = True
    if private_threads:
        options.threading.private_threadpool_size = private_threads
    return dataset.with_options(options)


def _interleaved(readers: list[BatchReader], epoch: int, start_batch: int, keys: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
    epochs = [reader.iter_epoch(epoch, start_batch=start_batch) for reader in readers]
    if len(epochs) == 1:
        for batch in epochs[0]:
            yield _contract_batch(batch, keys)
        return
    # even shards: every replica has the same number of batches, so zip loses nothing
    for step in zip(*epochs, strict=True):
        for batch in step:
            yield _contract_batch(batch, keys)


def _contract_batch(batch: dict[str, np.ndarray], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if batch.keys() != set(keys):
        raise StoreError(f"batch has columns {sorted(batch)}, the store's schema promises {sorted(keys)}")
    return {key: _contract_dtype(key, batch[key]) for key in keys}


def _contract_dtype(key: str, array: np.ndarray) -> np.ndarray:
    """float32 for labels and dense values, int64 for group ids, int32 for ids (no copy when already so)."""
    dtype = np.float32 if key in _FLOAT_KEYS else np.int64 if key == "group" else np.int32
    return array.astype(dtype, copy=False)
