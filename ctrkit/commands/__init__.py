"""Sub-commands of the ``ctrkit`` CLI; see :mod:`ctrkit.cli`."""
