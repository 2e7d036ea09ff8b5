"""Service sub-commands: `db upgrade|downgrade`, `worker`, `serve`, and the HTTP client commands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

from prunesearch import migrations
from prunesearch.choices import LogFormat, values
from prunesearch.cliutil import CLIError

from . import client_cli, demo, token_cli
from .auth import has_live_tokens, is_loopback
from .db import session_scope, upgrade_schema
from .logs import configure_logging
from .settings import Settings
from .supervisor import WorkerSupervisor

LOG_LEVELS = ["debug", "info", "warning"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the service's commands to the `prunesearch` parser."""
    db = subparsers.add_parser("db", help="apply or revert the service's database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("--revision", default=None, help="target (default: head for upgrade, base for downgrade)")
    _server_options(db)
    db.set_defaults(handler=_db)

    worker = subparsers.add_parser("worker", help="claim and run queued search jobs and exports")
    _server_options(worker)
    worker.add_argument("--max-idle", type=float, default=None, help="exit after this many idle seconds")
    worker.add_argument("--max-jobs", type=int, default=None, help="exit after working on this many jobs")
    worker.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process is gone")
    worker.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    worker.add_argument(
        "--nice", type=int, default=0, help="lower this worker's CPU priority (keeps an API responsive)"
    )
    worker.add_argument("--metrics-port", type=int, default=None, help="serve this worker's Prometheus metrics here")
    worker.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    _log_option(worker)
    worker.set_defaults(handler=_worker)

    serve = subparsers.add_parser("serve", help="run the API (and one local worker) on the data directory")
    _server_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="run the API alone")
    _log_option(serve)
    serve.set_defaults(handler=_serve)
    token_cli.register(subparsers, _server_options, settings_from)
    client_cli.register(subparsers)
    demo.register(subparsers)


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: SQLite in the data dir)")
    parser.add_argument("--data-dir", default=None, help="default: $PRUNESEARCH_HOME/data or ~/.local/share")


def _log_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=values(LogFormat), default=LogFormat.TEXT, help="json: one object a line, with ids"
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="warning: problems only")


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment settings, overridden by the command line."""
    overrides = {"database_url": args.database_url, "data_dir": args.data_dir}
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _db(args: argparse.Namespace) -> None:
    url = settings_from(args).db_url
    if args.action == "upgrade":
        upgrade_schema(url, args.revision or "head")
    elif args.action == "downgrade":
        migrations.downgrade(url, args.revision or "base")
    print(f"schema revision: {migrations.current(url) or 'none'}")


def _worker(args: argparse.Namespace) -> None:
    from prunesearch.search.storage import has_optuna_schema

    from .worker.loop import Worker

    configure_logging(args.log_format, "worker", args.log_level.upper())
    settings = settings_from(args)
    if migrations.current(settings.db_url) is None:
        raise CLIError(f"database {settings.db_url} has no prunesearch schema: run `prunesearch db upgrade`")
    if not has_optuna_schema(settings.db_url):  # workers never create it: several would race to
        raise CLIError(f"database {settings.db_url} has no Optuna tables: run `prunesearch db upgrade`")
    if args.metrics_port is not None:
        _serve_worker_metrics(args.metrics_host, args.metrics_port)
    worker = Worker(settings, max_idle_s=args.max_idle, max_jobs=args.max_jobs)
    worker.backend.warm_up()  # import torch and the engine now, not when the first job is already waiting
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    worker.install_signal_handlers()
    if args.nice:
        os.nice(args.nice)
    if args.exit_with_parent:
        worker.exit_with_parent()
    jobs = worker.run()
    logging.getLogger(__name__).info("worker exits after %d job(s)", jobs)


def _serve_worker_metrics(host: str, port: int) -> None:
    from .worker.metrics import serve_metrics

    if not 0 < port < 65536:
        raise CLIError(f"--metrics-port must be 1 to 65535, not {port}")
    try:
        serve_metrics(port, host)
    except OSError as exc:
        raise CLIError(f"cannot serve worker metrics on {host}:{port}: {exc}") from None


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .api.main import create_app

    configure_logging(args.log_format, "api", args.log_level.upper())
    settings = settings_from(args)
    upgrade_schema(settings.db_url)
    settings = guard_listen(args.host, settings)
    start = lambda: start_worker(settings, args.log_format, args.log_level)  # noqa: E731
    supervisor = None if args.no_worker else WorkerSupervisor(start).start()
    where = "API only" if supervisor is None else f"with worker pid {supervisor.process.pid}"
    print(f"prunesearch serving on http://{args.host}:{args.port} ({where}); data in {settings.data_dir}", flush=True)
    tokens = "required" if settings.require_token else "optional (requests without one act as the local admin)"
    print(f"API tokens: {tokens}", flush=True)
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so `finally` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = create_app(settings)
    app.state.worker_supervisor = supervisor  # restarts the worker if it dies; /readyz reports it
    try:
        # log_config=None: uvicorn's records go through the handler configured above (text or JSON)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", log_config=None)
    finally:
        if supervisor is not None:
            supervisor.stop()


def guard_listen(host: str, settings: Settings) -> Settings:
    """The settings to serve on `host` with: beyond loopback every request needs a token, and with no token
    created yet nobody could use the API, so refuse to start."""
    if is_loopback(host):
        return settings
    with session_scope(settings.db_url) as session:
        if not has_live_tokens(session):
            raise CLIError(
                f"refusing to listen on {host}: beyond loopback the API requires tokens and there are none;"
                " create one with `prunesearch token create --name NAME --admin` (same --database-url/--data-dir),"
                " or serve on 127.0.0.1"
            )
    return settings.model_copy(update={"require_token": True})


def start_worker(settings: Settings, log_format: str = LogFormat.TEXT, log_level: str = "info") -> subprocess.Popen:
    """One local worker process on the same database and data directory: niced and on one torch thread, so
    the API on the same machine stays responsive (and oversubscribed OpenMP threads do not thrash). In its own
    session: a Ctrl-C in the terminal reaches `serve` alone, which then stops the worker itself (were the worker
    to see it too, it would exit first, and be restarted)."""
    env = {
        **os.environ,
        "PRUNESEARCH_DATABASE_URL": settings.db_url,
        "PRUNESEARCH_DATA_DIR": str(settings.data_dir),
    }
    cmd = [sys.executable, "-m", "prunesearch.cli", "worker", "--exit-with-parent", "--nice", "10", "--threads", "1"]
    cmd += ["--log-format", str(log_format), "--log-level", log_level]
    return subprocess.Popen(cmd, env=env, start_new_session=True)
