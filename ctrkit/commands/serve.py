"""``ctrkit serve CKPT [--port 8080]``: an HTTP JSON service scoring rows of raw values.

The model is loaded with :func:`ctrkit.load` (a checkpoint, its run directory or, where
``ctrkit.load`` reads it, an exported bundle directory) and served by uvicorn with the FastAPI
application of :func:`ctrkit.serving.create_app`: ``POST /predict``, ``GET /health``,
``GET /metadata``. Concurrent requests are scored together (``--max-wait-ms``,
``--max-batch-rows``); a request of more than ``--max-rows-per-request`` rows is refused (413).

The port is bound before the model is loaded, so that a port in use is reported at once; a
client that connects while the model loads waits for it. SIGINT or SIGTERM stops the service
gracefully (requests in flight are answered) and the command exits 0.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="an HTTP JSON service: POST /predict, GET /health, GET /metadata",
        description="Serve a model over HTTP: POST /predict with {\"rows\": [{column: value, ...}, ...]} "
                    "(or {\"columns\": {column: [values]}}) returns {\"probabilities\": [...]}; GET /health; "
                    "GET /metadata. Concurrent requests are scored together in one model call.",
    )
    parser.add_argument("checkpoint", metavar="BUNDLE_OR_CKPT",
                        help="checkpoint, or model_save_dir (uses best.pt / best.tf), or an exported bundle directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on [default: 127.0.0.1; 0.0.0.0 for every interface]")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0: any free one, printed) [default: 8080]")
    parser.add_argument("--data", metavar="STORE",
                        help="the store the model was trained on, whose encoder encodes the rows "
                             "[default: the encoder.npz of the checkpoint's run directory]")
    parser.add_argument("--batch_size", type=int, default=8192, help="rows per model forward pass [default: 8192]")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of the framework (0: its default)")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="compute precision [default: the precision the model was trained in]")
    parser.add_argument("--gpu_ids", default="", help='one GPU to run on, e.g. "0" [default: CPU]')
    parser.add_argument("--max-wait-ms", type=float, default=2.0,
                        help="how long a request waits for others to share its model call (0: only those "
                             "already queued) [default: 2]")
    parser.add_argument("--max-batch-rows", type=int, default=8192,
                        help="rows of concurrent requests scored in one model call at most [default: 8192]")
    parser.add_argument("--max-rows-per-request", type=int, default=10_000,
                        help="larger requests are refused with 413 [default: 10000]")
    parser.add_argument("--access-log", action="store_true", help="log every request on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ctrkit.api import load
    from ctrkit.serving import ServeOptions, create_app

    options = ServeOptions(max_wait_ms=args.max_wait_ms, max_batch_rows=args.max_batch_rows,
                           max_rows_per_request=args.max_rows_per_request).validate()
    sock = _listen(args.host, args.port)
    try:
        model = load(args.checkpoint, encoder=args.data, gpu_ids=args.gpu_ids or None, batch_size=args.batch_size,
                     threads=args.threads, precision=args.precision)
        app = create_app(model, options)
        server = _graceful_server(uvicorn.Config(app, log_level="info" if args.access_log else "warning",
                                        access_log=args.access_log, timeout_graceful_shutdown=10))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"ctrkit serve: {model.name} ({model.framework}) on http://{shown}:{port} "
              f"(POST /predict, GET /health, GET /metadata); Ctrl-C stops", file=sys.stderr, flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
    stats = app.state.batcher.stats if app.state.batcher is not None else None
    done = f" after {stats.requests:,} requests ({stats.rows:,} rows, {stats.calls:,} model calls)" if stats else ""
    print(f"ctrkit serve: stopped{done}", file=sys.stderr)
    return 0


def _listen(host: str, port: int):
    """A listening TCP socket on ``host:port`` (a clear error when the port is taken)."""
    import socket

    from ctrkit.errors import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _graceful_server(config):
    """A uvicorn server for ``config`` that a signal stops with exit status 0."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped by SIGINT/SIGTERM without raising the signal again afterwards
        (uvicorn re-raises it once shut down, which would turn a clean stop into an exit by signal)."""

        def handle_exit(self, sig, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop without waiting for requests in flight
            else:
                self.should_exit = True

    return Server(config)
