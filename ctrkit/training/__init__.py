"""The framework-neutral training core: one epoch loop and one policy for PyTorch and TensorFlow.

A framework supplies only what is its own through :class:`~ctrkit.training.backend.Backend`
(building the optimiser, one training step, predicting a batch, saving and loading its state, RNG,
devices and reductions across processes); everything else lives here, once:

* :mod:`~ctrkit.training.loop` — :class:`TrainingLoop`, the epoch loop that drives a backend;
* :mod:`~ctrkit.training.policy` — validation each epoch, the improvement test, :class:`PlateauSchedule`
  (learning rate x ``lr_factor`` on a plateau), early stopping, divergence and the high-loss warning;
* :mod:`~ctrkit.training.progress` — :class:`Progress`, the counters saved in ``last``;
* :mod:`~ctrkit.training.objective` — the step contract: what a model may return (logits, or logits
  and an auxiliary loss) and how the objective is formed;
* :mod:`~ctrkit.training.regularization` — which parameters get weight decay, and the L2 on looked-up
  embedding rows, as data each framework applies;
* :mod:`~ctrkit.training.reporting` — progress bars, the epoch line, ``metrics.json``, TensorBoard;
* :mod:`~ctrkit.training.rundir` — the run directory (overwrite/resume guard, lock, debris) and the
  checks that a checkpoint can be resumed;
* :mod:`~ctrkit.training.signals` — SIGINT/SIGTERM while training;
* :mod:`~ctrkit.training.frameworks` — ``train_from_config`` and ``load_for_inference``, which
  dispatch on the framework.

Nothing in this package imports torch or TensorFlow.
"""
