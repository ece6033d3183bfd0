"""PyTorch implementation of the ctrkit models (``ctrkit.pytorch.layers``, ``ctrkit.pytorch.models``).

Submodules are imported on demand; importing this package does not import the models.
"""
