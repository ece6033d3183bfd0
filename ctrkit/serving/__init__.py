"""``ctrkit serve``: an HTTP JSON service scoring rows of raw values with a loaded model.

:func:`create_app` builds the FastAPI application of a :class:`~ctrkit.api.Model`;
:class:`MicroBatcher` merges concurrent requests into single model calls;
:mod:`ctrkit.serving.requests` validates the bodies. Needs the ``serve`` extra (fastapi, uvicorn).
"""

from ctrkit.serving.app import ServeOptions, create_app
from ctrkit.serving.batcher import MicroBatcher

__all__ = ["MicroBatcher", "ServeOptions", "create_app"]
