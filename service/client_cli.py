"""Client commands (all take `--server URL` and `--token TOKEN`): submit, status, pareto, download, and the remote
form of export."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prunesearch.choices import FINAL_JOB_STATUSES, EventKind, ExportStatus, HealMethod, JobStatus, values
from prunesearch.cliutil import CLIError, output_dir, print_json, read_json

from .client import Client, JobEvent, ServiceError, default_server, default_token

TABLE_METRICS = (
    *("kl", "ppl", "healed_kl", "healed_ppl"),
    *("latency_ms", "latency_fraction", "params", "memory_bytes", "vocab_coverage"),
    *("acceptance", "lookahead", "speedup", "draft_ms", "target_ms", "coverage"),  # draft jobs' trials
)
# `--heal-X` flags of the remote export: each is the heal option X of `POST /v1/jobs/{id}/exports` (the server checks
# the values; `prunesearch heal --help` explains them).
HEAL_FLAGS: dict[str, type] = {
    "tokens": int,
    "steps": int,
    "lr": float,
    "lora_rank": int,
    "seq_len": int,
    "batch": int,
    "ce_weight": float,
    "temperature": float,
    "data": str,
}
ACTIVE_EXPORT = (ExportStatus.QUEUED, ExportStatus.RUNNING)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the client commands (`export`, which has a local form too, is registered by `prunesearch.cli`)."""
    p = _add(subparsers, "submit", "submit a search job (a JSON spec file)", _submit)
    p.add_argument("spec", type=Path)
    p.add_argument("--idempotency-key", default=None)
    p = _add(subparsers, "status", "show a job or an export (with --watch, a progress bar until it finishes)", _status)
    p.add_argument("job_id", metavar="ID", help="a job id or an export id")
    p.add_argument("--watch", action="store_true")
    p.add_argument("--interval", type=float, default=1.0)
    p = _add(subparsers, "pareto", "print a job's Pareto front as a table", _pareto)
    p.add_argument("job_id")
    p = _add(subparsers, "download", "download an export, verify its sha256 and unpack it", _download)
    p.add_argument("export_id")
    p.add_argument("-o", "--out", type=Path, required=True)


def add_remote_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The remote form of `prunesearch export` (`job_id`, `--trial` and `--dtype` are shared with the local
    form): the service writes the trial's checkpoint."""
    _connection_options(parser)
    parser.add_argument("--wait", action="store_true", help="remote: wait until the export has finished")
    heal = parser.add_argument_group("heal (remote)", "heal the checkpoint by distillation from the job's model")
    for name, kind in HEAL_FLAGS.items():
        heal.add_argument(f"--heal-{name.replace('_', '-')}", dest=f"heal_{name}", type=kind, default=None)
    heal.add_argument("--heal-method", dest="heal_method", choices=values(HealMethod), default=None)
    heal.add_argument("--heal-eval", dest="heal_eval", nargs="+", default=None, help="dataset ids or allowed files")


def heal_options(args: argparse.Namespace) -> dict | None:
    """The heal options the `--heal-*` flags give; None when none is given (no heal)."""
    names = [*HEAL_FLAGS, "method", "eval"]
    options = {name: getattr(args, f"heal_{name}") for name in names if getattr(args, f"heal_{name}") is not None}
    return options or None


def export_remote(args: argparse.Namespace) -> int:
    """Ask the service at `--server` to export `--trial` of job `job_id`, healed when `--heal-*` flags are given
    (and with `--wait`, wait for it, showing its progress); 1 when the export failed."""
    return _guarded(_export, args)


def _add(subparsers, name: str, help_text: str, handler) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text)
    _connection_options(parser)
    parser.set_defaults(handler=lambda args: _guarded(handler, args))
    return parser


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=default_server(), help="service URL (default: $PRUNESEARCH_SERVER)")
    parser.add_argument(
        "--token",
        default=default_token(),
        help="API token (default: $PRUNESEARCH_TOKEN; none is needed on a server listening on loopback)",
    )


def _guarded(handler, args: argparse.Namespace):
    try:
        return handler(Client(args.server, token=args.token), args)
    except ServiceError as exc:
        raise CLIError(str(exc)) from None


def _submit(client: Client, args: argparse.Namespace) -> None:
    spec = read_json(args.spec, "job spec")
    job = client.submit(spec, idempotency_key=args.idempotency_key)
    print_json({"id": job["id"], "status": job["status"], "url": f"{args.server}/v1/jobs/{job['id']}"})


def _status(client: Client, args: argparse.Namespace) -> int:
    try:
        job = client.job(args.job_id)
    except ServiceError as exc:
        if exc.status != 404:
            raise
        return _export_status(client, args)
    if args.watch:
        job = watch(client, job, args.interval)
    print_json({k: v for k, v in job.items() if k != "spec"})
    return 1 if job["status"] == JobStatus.FAILED else 0


def _export_status(client: Client, args: argparse.Namespace) -> int:
    try:
        export = client.export_status(args.job_id)
    except ServiceError as exc:
        if exc.status == 404:
            raise ServiceError(f"404: no job or export {args.job_id}", 404) from None
        raise
    if args.watch:
        export = watch_export(client, export, args.interval)
    print_json(export)
    return 1 if export["status"] == ExportStatus.FAILED else 0


def watch(client: Client, job: dict, interval: float) -> dict:
    """A tqdm bar of trials done, with front size and hypervolume, until the job is final: follows the job's
    event stream, and polls every `interval` seconds if the stream cannot open or breaks off."""
    from tqdm import tqdm

    with tqdm(total=job["n_trials"], desc=job["id"][:8], unit="trial") as bar:
        _show_job(bar, job)
        if job["status"] not in FINAL_JOB_STATUSES:
            try:
                for event in client.events(job["id"]):
                    job = _apply_event(job, event)
                    _show_job(bar, job)
                    if job["status"] in FINAL_JOB_STATUSES:
                        break
            except ServiceError:
                pass  # poll instead (an older server, a proxy that buffers streams, a dropped connection)
        job = client.job(job["id"])
        while True:
            _show_job(bar, job)
            if job["status"] in FINAL_JOB_STATUSES:
                return job
            time.sleep(interval)
            job = client.job(job["id"])


def _apply_event(job: dict, event: JobEvent) -> dict:
    """The job's view with a `status` or `trial` event's counts applied (other kinds change nothing shown)."""
    if event.kind == EventKind.TRIAL:
        return job | {key: event.data[key] for key in ("trials_done", "front_size", "hypervolume")}
    if event.kind == EventKind.STATUS:
        return job | {key: event.data[key] for key in ("status", "trials_done", "error")}
    return job


def _show_job(bar, job: dict) -> None:
    bar.update(job["trials_done"] - bar.n)
    bar.set_postfix(status=job["status"], front=job["front_size"], hv=f"{job['hypervolume'] or 0:.4g}")


def format_number(value: float | None, spec: str = ".4g") -> str:
    """`value` formatted, or "-" where there is none (a loss of exactly 0.0 is a number)."""
    return "-" if value is None else format(value, spec)


def watch_export(client: Client, export: dict, interval: float) -> dict:
    """A tqdm bar of the export's phase, and of heal steps with the loss while it heals, until it is final:
    follows its job's event stream, and polls every `interval` seconds if the stream fails."""
    from tqdm import tqdm

    with tqdm(desc=export["id"][:8], unit="step") as bar:
        _show_export(bar, export)
        if export["status"] in ACTIVE_EXPORT:
            try:
                for event in client.events(export["job_id"]):
                    if event.kind == EventKind.EXPORT and event.data["export_id"] == export["id"]:
                        export = export | {key: event.data[key] for key in ("status", "progress", "error")}
                        _show_export(bar, export)
                        if export["status"] not in ACTIVE_EXPORT:
                            break
            except ServiceError:
                pass  # poll instead
        while True:
            export = client.export_status(export["id"])
            _show_export(bar, export)
            if export["status"] not in ACTIVE_EXPORT:
                return export
            time.sleep(interval)


def _show_export(bar, export: dict) -> None:
    progress = export.get("progress") or {}
    if progress.get("total") and bar.total != progress["total"]:
        bar.reset(total=progress["total"])
    bar.update((progress.get("step") or 0) - bar.n)
    bar.set_postfix(status=export["status"], phase=progress.get("phase"), loss=format_number(progress.get("loss")))


def _pareto(client: Client, args: argparse.Namespace) -> None:
    result = client.pareto(args.job_id)
    print(format_front(result["front"]))
    count, done, hv = len(result["front"]), result["trials_done"], result["hypervolume"]
    print(f"{count} plans after {done} trials; hypervolume {hv}")
    healed = result.get("healed_front") or []
    if healed:
        print("\nhealed front (ranked by healed quality: pick winners here)")
        print(format_front([row | {"metrics": row["metrics"] | _healed_scores(row)} for row in healed]))


def _healed_scores(row: dict) -> dict:
    return {k: v for k, v in row.get("healed", {}).items() if k in ("healed_kl", "healed_ppl")}


def format_front(front: list[dict]) -> str:
    """A plain-text table: trial, each metric, and a short plan description."""
    present = {k for row in front for k in row.get("metrics", {})}
    metrics = [m for m in TABLE_METRICS if m in present]
    header = ["trial", *metrics, "layers (heads/ffn)"]
    rows = [header]
    for row in sorted(front, key=lambda r: r["trial"]):
        plan = row.get("plan") or {}
        layers = " ".join(f"{la.get('heads')}/{la.get('ffn')}" for la in plan.get("layers", []))
        values = [_fmt(row.get("metrics", {}).get(m)) for m in metrics]
        rows.append([str(row["trial"]), *values, layers])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.rjust(w) for c, w in zip(r, widths, strict=False)), r[-1]]) for r in rows)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _export(client: Client, args: argparse.Namespace) -> int:
    export = client.export(args.job_id, args.trial, args.dtype, heal=heal_options(args))
    if args.wait:
        export = watch_export(client, export, interval=1.0)
    print_json(export)
    return 1 if export["status"] == ExportStatus.FAILED else 0


def _download(client: Client, args: argparse.Namespace) -> None:
    output_dir(args.out)  # a file in the way is the user's mistake, found before the download starts
    print_json(client.download(args.export_id, args.out))
