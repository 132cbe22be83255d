"""The ``otf`` command line.

Exit codes: 0 success, 1 runtime failure, 2 bad input (one line on stderr, no traceback;
``--debug`` shows it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import click
import typer

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

_USAGE_ERRORS = (click.UsageError, _typer_click.UsageError)
_EXITS = (click.exceptions.Exit, getattr(typer, "Exit", click.exceptions.Exit))
_ABORTS = (click.Abort, getattr(typer, "Abort", click.Abort))

from otf_flows.errors import InputError, OtfError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="On-the-fly machine-learned MD campaigns (GAP + DFT checks) as jobflow workflows.",
)
logger = logging.getLogger("otf_flows")

StoreOpt = typer.Option(None, "--store", help="Store directory or mongodb:// URI (default: $OTF_STORE or ./otf-store).")
JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout and nothing else.")


def _store(location: str | None, config_store: str | None = None, must_exist: bool = True):
    from otf_flows.store import OtfStore, resolve_location

    loc = resolve_location(location, config_store)
    store = OtfStore(loc)
    if must_exist and store.kind == "embedded" and not (store.path / "db").exists():
        raise InputError(f"--store: {store.path} holds no otf store (run a campaign first or pass --store)")
    return store


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def schema() -> None:
    """Print the campaign YAML's JSON Schema."""
    from otf_flows.campaign import json_schema

    sys.stdout.write(json_schema() + "\n")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Campaign YAML."),
    store: Optional[str] = StoreOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the campaign from the store."),
) -> None:
    """Run a campaign locally (progress bar, then a summary)."""
    from otf_flows import progress
    from otf_flows.campaign import load_config
    from otf_flows.managers.local import prepare_campaign, run_campaign

    cfg = load_config(config)
    st = _store(store, cfg.store, must_exist=False)
    start = time.perf_counter()
    flow = prepare_campaign(cfg, st, resume=resume)
    with _progress(cfg) as listener:
        progress.subscribe(listener)
        try:
            doc = run_campaign(cfg, st, flow)
        finally:
            progress.unsubscribe(listener)
    _summary(st, doc.name, time.perf_counter() - start)


def _progress(cfg):
    """Context manager yielding an event listener that drives a rich progress bar."""
    from contextlib import contextmanager

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def manager():
        console = Console(stderr=True)
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps │ interval {task.fields[interval]} │ checks {task.fields[checks]} "
                       "(failed {task.fields[failed]}) │ refits {task.fields[refits]} │ DFT {task.fields[dft]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        task = bar.add_task(cfg.name, total=cfg.md.total_steps, interval=cfg.check_interval, checks=0, failed=0,
                            refits=0, dft=0)
        counts = {"checks": 0, "failed": 0, "refits": 0, "dft": 0}

        def listener(event: str, data: dict) -> None:
            if event == "md_step":
                bar.update(task, completed=data["step"])
            elif event == "check":
                counts["checks"] += 1
                counts["failed"] += not data["passed"]
                bar.update(task, completed=data["step"], interval=data["new_interval"], **counts)
            elif event == "refit":
                counts["refits"] += 1
                bar.update(task, **counts)
            elif event == "reference":
                counts["dft"] += 1
                bar.update(task, **counts)

        with bar:
            yield listener

    return manager()


def _summary(st, name: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    doc = st.require_campaign(name)
    checks = st.checks(name)
    models = st.models(name)
    split = st.time_split(name)
    n_dft = len(st.frames_of(name))
    busy = split["reference"] + split["fit"] + split["ml_md"]
    other = max(seconds - busy, 0.0)
    table = Table(title=f"campaign {name}: {doc.status}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("MD steps", f"{doc.step} / {doc.total_steps}")
    table.add_row("DFT calls (initial + checks)", str(n_dft))
    table.add_row("checks (failed)", f"{len(checks)} ({sum(not c.passed for c in checks)})")
    table.add_row("refits", str(sum(c.refit for c in checks)))
    table.add_row("models", str(len(models)))
    table.add_row("current model", str(doc.model_id))
    for label, value in (("reference", split["reference"]), ("fit", split["fit"]), ("ML-MD", split["ml_md"]),
                         ("other", other)):
        share = 100 * value / seconds if seconds > 0 else 0.0
        table.add_row(f"wall time: {label}", f"{value:.1f} s ({share:.1f} %)")
    table.add_row("wall time: total", f"{seconds:.1f} s")
    console = Console(stderr=True)
    console.print(table)
    console.print(f"results: store {st.describe()} — try `otf checks {name}` and `otf models --campaign {name}`")


def _check_row(c) -> dict:
    return {
        "step": c.step,
        "interval": c.interval,
        "ediff": c.ediff,
        "fmax": c.fmax,
        "frmse": c.frmse,
        "vmax": c.vmax,
        "passed": c.passed,
        "new_interval": c.new_interval,
        "refit": c.refit,
        "model_id": c.model_id,
        "new_model_id": c.new_model_id,
        "reference_seconds": c.reference_seconds,
    }


def _model_row(m) -> dict:
    return {
        "model_id": m.model_id,
        "version": m.version,
        "campaign": m.campaign,
        "parent_model_id": m.parent_model_id,
        "n_training_frames": m.n_training_frames,
        "trigger_check_step": m.trigger_check_step,
        "fit_seconds": m.fit_seconds,
        "created_at": m.created_at.isoformat(),
    }


def _table(rows: list[dict], columns: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[_fmt(row[c]) for c in columns])
    Console().print(table)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@app.command()
def checks(campaign: str = typer.Argument(..., help="Campaign name."), store: Optional[str] = StoreOpt,
           as_json: bool = JsonOpt) -> None:
    """One row per DFT check."""
    st = _store(store)
    st.require_campaign(campaign)
    rows = [_check_row(c) for c in st.checks(campaign)]
    if as_json:
        _print_json(rows)
    else:
        _table(rows, ["step", "interval", "ediff", "fmax", "frmse", "vmax", "passed", "new_interval", "refit",
                      "model_id", "new_model_id"], f"checks of {campaign}")


@app.command()
def models(campaign: Optional[str] = typer.Option(None, "--campaign", help="Only this campaign's models."),
           store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Model versions."""
    st = _store(store)
    if campaign:
        st.require_campaign(campaign)
    rows = [_model_row(m) for m in st.models(campaign)]
    if as_json:
        _print_json(rows)
    else:
        _table(rows, ["model_id", "parent_model_id", "n_training_frames", "trigger_check_step", "fit_seconds",
                      "created_at"], "models")


@app.command()
def lineage(model_id: str = typer.Argument(..., help="Model id."), store: Optional[str] = StoreOpt,
            as_json: bool = JsonOpt) -> None:
    """Ancestry of a model, newest first."""
    st = _store(store)
    rows = [_model_row(m) for m in st.lineage(model_id)]
    if as_json:
        _print_json(rows)
    else:
        _table(rows, ["model_id", "parent_model_id", "n_training_frames", "trigger_check_step", "fit_seconds",
                      "created_at"], f"lineage of {model_id}")


@app.command()
def status(campaign: Optional[str] = typer.Argument(None, help="Campaign name (default: all)."),
           store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Campaigns, progress and cost so far."""
    st = _store(store)
    docs = [st.require_campaign(campaign)] if campaign else st.campaigns()
    rows = []
    for d in docs:
        split = st.time_split(d.name)
        rows.append({
            "campaign": d.name, "status": d.status, "step": d.step, "total_steps": d.total_steps,
            "model_id": d.model_id, "n_checks": len(st.checks(d.name)), "n_models": len(st.models(d.name)),
            "wall_seconds": d.wall_seconds, "reference_seconds": split["reference"], "fit_seconds": split["fit"],
            "ml_md_seconds": split["ml_md"], "message": d.message,
        })
    if as_json:
        _print_json(rows if not campaign else rows[0])
    else:
        _table(rows, ["campaign", "status", "step", "total_steps", "model_id", "n_checks", "n_models",
                      "wall_seconds", "message"], "campaigns")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit 2 for bad input, 1 for failures."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    level = os.environ.get("OTF_LOG_LEVEL", "DEBUG" if debug else "WARNING")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="otf", standalone_mode=False)
    except _EXITS as err:
        return getattr(err, "exit_code", 0)
    except _USAGE_ERRORS as err:
        if debug:
            raise
        if type(err).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(err.format_message() + "\n")
            return 2
        where = f" (see `otf {err.ctx.info_name} --help`)" if err.ctx and err.ctx.info_name != "otf" else ""
        sys.stderr.write(f"otf: error: {err.format_message()}{where}\n")
        return 2
    except _ABORTS:
        sys.stderr.write("otf: aborted\n")
        return 130
    except InputError as err:
        if debug:
            raise
        sys.stderr.write(f"otf: error: {err}\n")
        return 2
    except OtfError as err:
        if debug:
            raise
        sys.stderr.write(f"otf: failed: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("otf: interrupted; continue with `otf run CONFIG --resume`\n")
        return 130
    except Exception as err:  # noqa: BLE001 - last resort: one line, not a traceback
        if debug:
            raise
        sys.stderr.write(f"otf: failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                         "(rerun with --debug for the traceback)\n")
        return 1
    return 0


def entrypoint() -> None:
    """Console-script wrapper."""
    sys.exit(main())
