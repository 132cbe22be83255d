"""Campaign commands: run, schema, checks, models, lineage, status."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from otf_flows.commands import (
    JsonOpt,
    StoreOpt,
    app,
    check_row,
    make_console,
    model_row,
    open_store_arg,
    print_json,
    print_table,
)


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
    st = open_store_arg(store, cfg.store, must_exist=False)
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

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def manager():
        console = make_console(stderr=True)
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps │ interval {task.fields[interval]} │ checks {task.fields[checks]} "
                       "(failed {task.fields[failed]}) │ fits {task.fields[refits]} │ DFT {task.fields[dft]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        task = bar.add_task(cfg.name, total=cfg.md.total_steps, interval=cfg.check_interval, checks=0, failed=0,
                            refits=0, dft=0)
        counts = {"checks": 0, "failed": 0, "refits": 0, "dft": 0}

        # In a log file (batch job, nohup) the bar is drawn only at the end: write a line per
        # check and refit instead, so that progress can be followed with `tail -f`.
        lines = not console.is_terminal

        def listener(event: str, data: dict) -> None:
            if event == "md_step":
                bar.update(task, completed=data["step"])
            elif event == "check":
                counts["checks"] += 1
                counts["failed"] += not data["passed"]
                bar.update(task, completed=data["step"], interval=data["new_interval"], **counts)
                if lines:
                    verdict = "passed" if data["passed"] else "FAILED"
                    console.print(f"step {data['step']}/{cfg.md.total_steps}: check {verdict}, next interval "
                                  f"{data['new_interval']} ({counts['checks']} checks, {counts['refits']} fits, "
                                  f"{counts['dft']} DFT calls, {bar.tasks[0].elapsed or 0:.0f} s)",
                                  highlight=False)
            elif event == "refit":
                counts["refits"] += 1
                bar.update(task, **counts)
                if lines:
                    console.print(f"model {data['model_id']} fitted on {data['n_frames']} frames "
                                  f"in {data['seconds'] or 0:.0f} s", highlight=False)
            elif event == "refit_failed" and lines:
                console.print(f"refit failed, going on with {data['model_id']}: {data['error']}", highlight=False)
            elif event == "reference":
                counts["dft"] += 1
                bar.update(task, **counts)
                if lines:
                    console.print(f"DFT call {counts['dft']} ({data['kind']}, step {data['step']}) "
                                  f"took {data['seconds']:.0f} s", highlight=False)

        with bar:
            yield listener

    return manager()


def _summary(st, name: str, seconds: float) -> None:
    from rich.table import Table

    doc = st.require_campaign(name)
    checks = st.checks(name)
    models = st.models(name)
    split = st.time_split(name)
    n_dft = len(st.frames_of(name))
    busy = split["reference"] + split["fit"] + split["ml_md"]
    # the split covers the whole campaign, over every run of it (--resume); the wall time of a
    # run killed without a chance to record it is missing from doc.wall_seconds, hence the max
    total = max(doc.wall_seconds, busy)
    other = max(total - busy, 0.0)
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
        share = 100 * value / total if total > 0 else 0.0
        table.add_row(f"wall time: {label}", f"{value:.1f} s ({share:.1f} %)")
    table.add_row("wall time: campaign", f"{total:.1f} s ({total / 60:.1f} min)")
    if abs(total - seconds) > 0.1 * total:  # earlier runs of a resumed campaign
        table.add_row("wall time: this run", f"{seconds:.1f} s")
    console = make_console(stderr=True)
    console.print(table)
    console.print(f"results: store {st.describe()} — try `otf checks {name}` and `otf models --campaign {name}`")


@app.command()
def checks(campaign: str = typer.Argument(..., help="Campaign name."), store: Optional[str] = StoreOpt,
           as_json: bool = JsonOpt) -> None:
    """One row per DFT check."""
    st = open_store_arg(store)
    st.require_campaign(campaign)
    rows = [check_row(c) for c in st.checks(campaign)]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["step", "interval", "ediff", "fmax", "frmse", "vmax", "passed", "new_interval", "refit",
                      "model_id", "new_model_id"], f"checks of {campaign}")


@app.command()
def models(campaign: Optional[str] = typer.Option(None, "--campaign", help="Only this campaign's models."),
           store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Model versions."""
    st = open_store_arg(store)
    if campaign:
        st.require_campaign(campaign)
    rows = [model_row(m) for m in st.models(campaign)]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["model_id", "parent_model_id", "n_training_frames", "trigger_check_step", "fit_seconds",
                      "created_at"], "models")


@app.command()
def lineage(model_id: str = typer.Argument(..., help="Model id."), store: Optional[str] = StoreOpt,
            as_json: bool = JsonOpt) -> None:
    """Ancestry of a model, newest first."""
    st = open_store_arg(store)
    rows = [model_row(m) for m in st.lineage(model_id)]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["model_id", "parent_model_id", "n_training_frames", "trigger_check_step", "fit_seconds",
                      "created_at"], f"lineage of {model_id}")


@app.command()
def status(campaign: Optional[str] = typer.Argument(None, help="Campaign name (default: all)."),
           store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Campaigns, progress and cost so far."""
    st = open_store_arg(store)
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
        print_json(rows if not campaign else rows[0])
    else:
        print_table(rows, ["campaign", "status", "step", "total_steps", "model_id", "n_checks", "n_models",
                      "wall_seconds", "message"], "campaigns")
