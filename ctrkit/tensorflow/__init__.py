"""TensorFlow 2 / Keras 3 implementation of the ctrkit models (``ctrkit.tensorflow.layers``, ``ctrkit.tensorflow.models``).

Mirrors ``ctrkit.pytorch`` file for file and class for class; ``ctrkit.parity`` maps the weights
between the two. Importing this package imports TensorFlow (when installed) with its C++ start-up notices filtered
out of stderr; the submodules are imported on demand.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

# TensorFlow's C++ info lines (oneDNN notices, allocator patches) on stderr would bury ctrkit's own
# one-line messages; warnings and errors still print. A user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Lines that TensorFlow's C++ runtime prints at import, before its logging honours the level above.
STARTUP_NOISE = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", "I0000 ")


@contextlib.contextmanager
def _filtered_stderr():
    """Run the body with file descriptor 2 captured; replay its lines but the start-up notices."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(STARTUP_NOISE)]
            sys.stderr.write("".join(kept))


def _import_tensorflow() -> None:
    if "tensorflow" in sys.modules:
        return
    with _filtered_stderr(), contextlib.suppress(ImportError):  # submodules raise it where TF is needed
        import tensorflow  # noqa: F401


_import_tensorflow()
