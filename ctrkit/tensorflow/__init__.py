"""TensorFlow 2 / Keras 3 implementation of the ctrkit models (``ctrkit.tensorflow.layers``, ``ctrkit.tensorflow.models``).

Mirrors ``ctrkit.pytorch`` file for file and class for class; ``ctrkit.parity`` maps the weights
between the two. Submodules are imported on demand; importing this package does not import
TensorFlow.
"""
