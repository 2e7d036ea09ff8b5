"""The logs of `serve` and `worker`: plain lines, or one JSON object a line (`--log-format json`, python-json-logger)
that carries the ids a record names (`job_id`, `trial`, `export_id`, passed as `extra=`) as fields. Libraries'
chatter stays off the terminal: Alembic's migration lines (Optuna migrates its own tables in every worker) and
httpx's request lines."""

from __future__ import annotations

import logging

from prunesearch.choices import LogFormat

# Loggers that report routine work at INFO: only their warnings are shown.
QUIET_LOGGERS = ("alembic", "httpx", "httpcore")
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def configure_logging(log_format: LogFormat | str, role: str, level: int | str = logging.INFO) -> None:
    """Send records at `level` and above to stderr, formatted as `log_format`; `role` ("api", "worker") names the
    process in each line."""
    handler = logging.StreamHandler()
    if LogFormat(log_format) == LogFormat.JSON:
        from pythonjsonlogger.json import JsonFormatter

        rename = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}
        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields=rename, static_fields={"role": role}))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {role}[%(process)d] %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet_libraries()


def quiet_libraries() -> None:
    """Show only warnings from the libraries in `QUIET_LOGGERS`."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
