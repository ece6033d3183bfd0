"""ctrkit: deep click-through-rate models in PyTorch and TensorFlow on an LMDB store."""

__version__ = "0.1.0"

_API = ("preprocess", "train", "load")


def __getattr__(name: str):
    """``ctrkit.preprocess``, ``ctrkit.train`` and ``ctrkit.load`` (:mod:`ctrkit.api`), imported on first use
    so that ``import ctrkit`` (and ``ctrkit --help``) stays light."""
    if name in _API:
        from ctrkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'ctrkit' has no attribute {name!r}")
