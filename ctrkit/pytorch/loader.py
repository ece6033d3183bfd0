"""PyTorch input pipeline: a :class:`~ctrkit.data.batches.BatchReader` behind a ``DataLoader``.

The reader already produces whole batches, so the ``DataLoader`` runs with ``batch_size=None``
(no collation) and only adds worker processes and pinned memory. Worker ``w`` of ``W`` reads the
batches ``start_batch + w, start_batch + w + W, ...``; PyTorch's loader takes batches from its
workers round-robin starting at worker 0, so the batch order is the single-process order for any
``num_workers``, including when an epoch is resumed in the middle.

The loader gets its own ``torch.Generator``: creating a ``DataLoader`` iterator draws a seed from
its generator, and drawing it from the global RNG would shift the dropout masks of a resumed run.

A user error in a worker (a :class:`~ctrkit.errors.CtrkitError`: a damaged chunk, a store replaced
under the run) reaches the training process as that same error with its one-line message.
PyTorch itself would re-raise it with a multi-line "Caught StoreError in DataLoader worker process
0 ... Original Traceback" text; the worker hands the error over as an item instead
(:class:`WorkerError`), which the loader raises where that batch would have been.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ctrkit.data.batches import BatchReader
from ctrkit.errors import CtrkitError

TensorBatch = dict[str, torch.Tensor]


def to_tensors(batch: dict[str, np.ndarray]) -> TensorBatch:
    """numpy batch -> CPU tensors, sharing memory when the array is writable, copying otherwise.

    Arrays read straight out of the store are read-only views, which ``torch.from_numpy`` must
    not wrap (torch tensors are always writable).
    """
    out = {}
    for key, array in batch.items():
        if not (array.flags.writeable and array.flags.c_contiguous):
            array = np.array(array, order="C", copy=True)
        out[key] = torch.from_numpy(array)
    return out


class BatchDataset(IterableDataset):
    """One epoch of a reader's batches as tensors, split across loader workers by batch index."""

    def __init__(self, reader: BatchReader, epoch: int, start_batch: int = 0):
        super().__init__()
        self.reader = reader
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(0, len(self.reader) - self.start_batch)

    def __iter__(self) -> Iterator[TensorBatch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # rotate worker ids so that loader worker 0 reads batch ``start_batch``
        reader_worker = (worker + self.start_batch) % workers
        batches = self.reader.iter_epoch(self.epoch, start_batch=self.start_batch, worker_id=reader_worker, num_workers=workers)
        if info is None:  # in the training process an error needs no wrapping
            yield from map(to_tensors, batches)
            return
        try:
            for batch in batches:
                yield to_tensors(batch)
        except CtrkitError as exc:
            yield WorkerError(exc)


class WorkerError:
    """A user error raised in a loader worker, carried to the training process as an item.

    It carries the error's class and message (what every ctrkit error is made of), and is neither
    a mapping nor a sequence, so the loader's conversion and pinning pass it through unchanged.
    """

    def __init__(self, error: CtrkitError):
        self.error_type = type(error)
        self.message = str(error)

    def raise_error(self) -> None:
        try:
            error = self.error_type(self.message)
        except Exception:  # a subclass with other constructor arguments: keep at least the line
            error = CtrkitError(self.message)
        raise error from None


class BatchLoader(DataLoader):
    """A ``DataLoader`` that raises a worker's :class:`~ctrkit.errors.CtrkitError` as itself."""

    def __iter__(self) -> Iterator[TensorBatch]:
        for item in super().__iter__():
            if isinstance(item, WorkerError):
                item.raise_error()
            yield item


def make_loader(
    reader: BatchReader,
    epoch: int = 0,
    start_batch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> BatchLoader:
    """A ``DataLoader`` yielding the reader's batches of ``epoch`` from ``start_batch`` on.

    Args:
        reader: the (sharded) batch reader of one split.
        epoch: selects the shuffle order.
        start_batch: first batch to yield (resume in the middle of an epoch).
        num_workers: loader processes (0: read in the training process).
        pin_memory: page-locked host memory for faster copies to a GPU.
    """
    generator = torch.Generator()
    generator.manual_seed(0)
    return BatchLoader(
        BatchDataset(reader, epoch, start_batch),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=generator,
    )
