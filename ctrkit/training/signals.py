"""SIGINT and SIGTERM while training: finish the step, save ``last``, stop (:class:`StopSignals`)."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

from ctrkit.training.errors import TrainingInterrupted


class StopSignals:
    """SIGINT and SIGTERM while training: remember the first and let the trainer stop after the step.

    Installed only in the main thread (Python's rule for signal handlers); elsewhere ``received``
    stays None and the signals keep their previous handlers. A second signal raises
    :class:`TrainingInterrupted` at once: the atomic writes leave every file complete.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            return
        raise TrainingInterrupted(
            f"interrupted again by {signal.Signals(signum).name} while stopping; stopped at once, "
            "the files in --model_save_dir are those of the last complete write", signum
        )

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    @property
    def installed(self) -> bool:
        return bool(self._previous)


class IgnoreStopSignals:
    """``worker_init_fn`` of a training loader's worker processes while :class:`StopSignals` is installed.

    A scheduler's SIGTERM (or Ctrl-C in a terminal) reaches the loader workers too; dying of it,
    they would make the loader fail ("DataLoader worker is killed by signal" in torch) in the main
    process, in the middle of a step or of the ``last`` write. Ignoring it, they keep serving
    batches until the main process has saved and shuts them down.
    """

    def __init__(self, then: Callable[[int], None] | None = None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        for signum in StopSignals.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)
