"""ctrkit: deep click-through-rate models in PyTorch and TensorFlow on an LMDB store."""

__version__ = "0.1.0"
