"""The HTTP JSON service of a loaded :class:`~ctrkit.api.Model` (FastAPI).

=====================  ==========================================================================
``POST /predict``      ``{"rows": [{column: value, ...}, ...]}`` or ``{"columns": {column: [...]}}``
                       → ``{"probabilities": [...], "rows": n, "model": ..., "framework": ...}``
``GET /health``        200 ``{"status": "ok", ...}`` once the model is loaded and the batcher runs
                       (503 otherwise), with the batcher's counters
``GET /metadata``      ``Model.metadata()`` (model, framework, dataset, schema, input columns,
                       hyper-parameters) with ``version`` and the serving options
=====================  ==========================================================================

A request is read and validated (:mod:`ctrkit.serving.requests`) and its rows encoded by the
model's encoder in a worker thread of the server's pool, so one large request does not hold up
the event loop; the encoded rows then go to the :class:`~ctrkit.serving.batcher.MicroBatcher`,
which scores the rows of concurrent requests together in one model call. Each request is encoded
alone, so its scores never depend on what other requests sent (a column's JSON types are read per
request, as a file's are per file).

Every refusal is a 4xx with a JSON body ``{"error": "<one line>", ...details}``; an unexpected
failure is a 500 of the same shape, and the service keeps answering.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ctrkit.errors import ConfigError, InputError
from ctrkit.serving.batcher import MicroBatcher
from ctrkit.serving.requests import RequestError, check_content_type, encoding_problems, parse_json, read_columns


@dataclass
class ServeOptions:
    """How requests are batched and bounded (the ``ctrkit serve`` flags of the same names)."""

    max_wait_ms: float = 2.0  # how long the first waiting request waits for others to join its model call
    max_batch_rows: int = 8192  # rows gathered into one model call at most
    max_rows_per_request: int = 10_000  # more rows in one request: 413
    max_body_bytes: int = 64 * 2 ** 20  # a larger body: 413

    def validate(self) -> "ServeOptions":
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ConfigError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms}")
        for name in ("max_batch_rows", "max_rows_per_request", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self


def create_app(model: Any, options: ServeOptions | None = None) -> FastAPI:
    """A FastAPI application serving ``model`` (a :class:`~ctrkit.api.Model`).

    The micro-batcher starts with the application (its lifespan: ``uvicorn`` or ``with
    TestClient(app)``) and stops with it, after scoring what was queued; it is
    ``app.state.batcher``.
    """
    options = (options or ServeOptions()).validate()
    columns = list(model.input_columns)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(model.predict_batch, max_wait_s=options.max_wait_ms / 1000,
                               max_batch_rows=options.max_batch_rows).start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)

    app = FastAPI(title="ctrkit serve", summary=f"click probabilities from {model.name} ({model.framework})",
                  lifespan=lifespan)
    app.state.batcher = None
    _add_error_handlers(app)

    def encode(body: bytes):
        """Body → encoded rows; runs in the thread pool (JSON parsing and encoding are CPU work)."""
        parsed = read_columns(parse_json(body), columns, options.max_rows_per_request)
        try:
            encoded = model.encode(parsed.columns, strict=False)
        except InputError as exc:  # the checks above leave none; kept as a 422, never a 500
            raise RequestError(422, str(exc)) from None
        if encoded.problems:
            raise encoding_problems(encoded.problems, parsed.form)
        return encoded

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        batcher = _running(app)
        check_content_type(request.headers.get("content-type"))  # before reading a body of another kind
        body = await _read_body(request, options.max_body_bytes)
        encoded = await run_in_threadpool(encode, body)
        scores = await asyncio.wrap_future(batcher.submit(encoded.batch))
        return JSONResponse({"probabilities": scores.tolist(), "rows": encoded.rows,
                             "model": model.name, "framework": model.framework})

    @app.get("/health")
    async def health() -> JSONResponse:
        batcher = app.state.batcher
        ready = batcher is not None and batcher.running
        body = {"status": "ok" if ready else "starting", "model": model.name, "framework": model.framework}
        if batcher is not None:
            body["batcher"] = batcher.stats.as_dict()
        return JSONResponse(body, status_code=200 if ready else 503)

    metadata = {**model.metadata(), "serving": asdict(options)}

    @app.get("/metadata")
    async def get_metadata() -> JSONResponse:
        from ctrkit import __version__

        return JSONResponse({**metadata, "version": __version__})

    return app


def _running(app: FastAPI) -> MicroBatcher:
    batcher = app.state.batcher
    if batcher is None or not batcher.running:
        raise RequestError(503, "the model is not ready (starting or shutting down); retry shortly")
    return batcher


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {int(declared):,} bytes; at most {limit:,} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body has more than {limit:,} bytes; at most {limit:,} are accepted")
        chunks.append(chunk)
    return b"".join(chunks)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": message, ...}``: ours, the framework's (404, 405) and the unexpected (500)."""

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"error": f"{message}: {request.method} {request.url.path}"}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request", "problems": exc.errors()}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)
