"""``BatchReader``: framework-neutral batches (dicts of numpy arrays) from one split of a store.

The order of one epoch is a pure function of ``(seed, epoch)``:

1. the chunks of the split are permuted with ``rng(seed, epoch)`` (identity without shuffling) and
   read as one virtual stream of rows;
2. the stream is cut into ``world_size`` contiguous, disjoint shards of near-equal size (exactly
   equal with ``even_shards=True``, which drops the at most ``world_size - 1`` leftover rows so
   that every rank runs the same number of steps, as DistributedDataParallel needs);
3. a rank's shard is read in windows of ``shuffle_window`` chunks; the rows of a window are
   permuted with ``rng(seed, epoch, rank, window)``;
4. the resulting row stream is cut into batches of ``batch_size``; rows left at a window's end
   join the next window's first batch, so only the last batch of an epoch can be short
   (``drop_last=True`` drops it);
5. loader worker ``w`` of ``W`` yields the batches ``w, w + W, w + 2W, ...``. A round-robin
   loader (PyTorch's ``DataLoader`` over an ``IterableDataset``) therefore returns exactly the
   single-process order, whatever the number of workers.

Resuming at batch ``k`` (:meth:`BatchReader.iter_epoch` with ``start_batch=k``) reproduces the
rest of the epoch exactly and skips whole windows without reading them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ctrkit.data.store import SplitInfo, Store
from ctrkit.errors import ConfigError

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of chunk ``chunk``."""

    chunk: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class BatchReader:
    """Batches of one split, shuffled by ``(seed, epoch)`` and sharded by ``(rank, world_size)``.

    Args:
        store: a :class:`Store` or its path.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        batch_size: rows per batch on this rank.
        shuffle: permute chunk order and rows within windows.
        seed: base seed of the permutations.
        shuffle_window: chunks per shuffling window (memory: about ``shuffle_window`` chunks).
        drop_last: drop the last, short batch of the epoch.
        rank, world_size: this process's shard.
        even_shards: give every rank exactly ``rows // world_size`` rows.
        columns: batch keys to return (default: all of ``label``, ``sparse``, ``dense``, ``seq:*``).

    Example::

        reader = BatchReader("criteo.lmdb", "train", 4096, shuffle=True, seed=2018)
        for batch in reader.iter_epoch(epoch=0):
            batch["sparse"]          # (B, n_sparse) int32
    """

    def __init__(
        self,
        store: Store | str | os.PathLike,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_window: int = 4,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        even_shards: bool = False,
        columns: tuple[str, ...] | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        if shuffle_window < 1:
            raise ConfigError(f"shuffle_window must be >= 1 chunk, got {shuffle_window}")
        self.store = store if isinstance(store, Store) else Store(store)
        self.info: SplitInfo = self.store.split(split)
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_window = shuffle_window
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.even_shards = even_shards
        self.columns = columns

    # -- sizes -------------------------------------------------------------------------------
    def _shard_bounds(self) -> tuple[int, int]:
        total, world, rank = self.info.rows, self.world_size, self.rank
        if self.even_shards:
            per_rank = total // world
            return rank * per_rank, (rank + 1) * per_rank
        return rank * total // world, (rank + 1) * total // world

    @property
    def num_rows(self) -> int:
        """Rows this rank reads in one epoch (before ``drop_last``)."""
        start, stop = self._shard_bounds()
        return stop - start

    def __len__(self) -> int:
        """Batches this rank yields in one epoch (all loader workers together)."""
        rows = self.num_rows
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    # -- the epoch plan ----------------------------------------------------------------------
    def chunk_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.info.num_chunks)
        return np.random.default_rng([self.seed, epoch]).permutation(self.info.num_chunks)

    def shard_segments(self, epoch: int) -> list[Segment]:
        """This rank's rows as pieces of chunks, in stream order."""
        start, stop = self._shard_bounds()
        segments, position = [], 0
        for chunk in self.chunk_order(epoch):
            rows = self.info.chunk_rows[chunk]
            lo, hi = max(start, position), min(stop, position + rows)
            if lo < hi:
                segments.append(Segment(int(chunk), lo - position, hi - position))
            position += rows
            if position >= stop:
                break
        return segments

    def _windows(self, epoch: int) -> list[list[Segment]]:
        segments = self.shard_segments(epoch)
        return [segments[i : i + self.shuffle_window] for i in range(0, len(segments), self.shuffle_window)]

    # -- reading -----------------------------------------------------------------------------
    def _read_window(self, window: list[Segment]) -> Batch:
        """The rows of a window's segments in stream order, copied once out of the store."""
        return self.store.read_rows(self.split, [(s.chunk, s.start, s.stop) for s in window], self.columns)

    def _window_order(self, epoch: int, window_index: int, rows: int) -> np.ndarray | None:
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch, self.rank, window_index]).permutation(rows)

    def iter_epoch(
        self, epoch: int = 0, *, start_batch: int = 0, worker_id: int = 0, num_workers: int = 1
    ) -> Iterator[Batch]:
        """Yield this rank's (and this worker's) batches of ``epoch``, from ``start_batch`` on."""
        if not 0 <= worker_id < num_workers:
            raise ConfigError(f"worker_id {worker_id} is not in [0, num_workers={num_workers})")
        size, total_batches = self.batch_size, len(self)
        pending: list[tuple[Batch, np.ndarray | slice]] = []  # pieces of the next batch
        pending_rows = 0
        batch_index = 0
        position = 0  # stream position of the current window's first row
        for window_index, window in enumerate(self._windows(epoch)):
            window_rows = sum(s.rows for s in window)
            first_batch_of_next_window = (position + window_rows) // size
            if first_batch_of_next_window < start_batch:  # every batch touching it is skipped
                position += window_rows
                batch_index = first_batch_of_next_window
                # rows of skipped windows that open the next batch: counted, never assembled,
                # since that batch precedes start_batch
                pending, pending_rows = [], position - batch_index * size
                continue
            arrays = self._read_window(window)
            order = self._window_order(epoch, window_index, window_rows)
            offset = 0
            while offset < window_rows and batch_index < total_batches:
                take = min(size - pending_rows, window_rows - offset)
                rows = slice(offset, offset + take) if order is None else order[offset : offset + take]
                pending.append((arrays, rows))
                pending_rows += take
                offset += take
                if pending_rows == size:
                    if batch_index >= start_batch and batch_index % num_workers == worker_id:
                        yield _assemble(pending)
                    batch_index += 1
                    pending, pending_rows = [], 0
            position += window_rows
        if pending_rows and batch_index < total_batches:
            if batch_index >= start_batch and batch_index % num_workers == worker_id:
                yield _assemble(pending)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_epoch(0)


def _assemble(pieces: list[tuple[Batch, np.ndarray | slice]]) -> Batch:
    """Gather the rows of a batch from one or more windows (a slice of one window is a view)."""
    if len(pieces) == 1:
        arrays, rows = pieces[0]
        return {k: _rows(v, rows) for k, v in arrays.items()}
    return {key: np.concatenate([_rows(arrays[key], rows) for arrays, rows in pieces]) for key in pieces[0][0]}


def _rows(array: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    return array[rows] if isinstance(rows, slice) else np.take(array, rows, axis=0)
