"""Campaign commands: run, schema, checks, models, lineage, status."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from otf_flows import progress
from otf_flows.campaign import json_schema, load_config
from otf_flows.commands import (
    LAST_CHECKS,
    JsonOpt,
    StoreOpt,
    WalkerOpt,
    app,
    check_row,
    check_time_errors,
    make_console,
    model_row,
    open_store_arg,
    per_1000_steps,
    print_json,
    print_table,
    require_walker,
    walker_rows,
)
from otf_flows.errors import InputError
from otf_flows.flows.lifecycle import prepare_campaign
from otf_flows.managers.allocation import allocation_rows, allocations
from otf_flows.managers.local import run_campaign
from otf_flows.managers.stopping import EXIT_STOPPED, Abandoned, GracefulStop
from otf_flows.walkers import walker_steps


@app.command()
def schema() -> None:
    """Print the campaign YAML's JSON Schema."""
    sys.stdout.write(json_schema() + "\n")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Campaign YAML."),
    store: Optional[str] = StoreOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the campaign from the store."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (progress stays on "
                                 "stderr)."),
    stop_after: Optional[float] = typer.Option(
        None, "--stop-after", min=0, help="Stop resumably after this many seconds (before a walltime), between two "
        "jobs; exit code 3."),
    stop_grace: float = typer.Option(
        60.0, "--stop-grace", min=0, help="Seconds the job running at a stop request (SIGTERM, --stop-after) may "
        "take to finish; then it is abandoned and reruns on --resume."),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Cache directory (before execution.cache_dir and $OTF_CACHE_DIR; default "
        "<tmp>/otf_flows-cache-<uid>)."),
    scratch_dir: Optional[Path] = typer.Option(
        None, "--scratch-dir", help="Root of the job directories (before execution.scratch_dir and "
        "$OTF_SCRATCH_DIR; default <store>/runs, or ./otf-runs for a MongoDB store)."),
) -> None:
    """Run a campaign locally (progress bar, then a summary).

    SIGTERM (a batch system's walltime warning) or --stop-after stops the campaign between two
    jobs and exits with code 3: continue with `otf run CONFIG --resume` (otf submit --batch
    scripts do). A second SIGTERM abandons the running job at once.
    """
    cfg = load_config(config)  # the settings OtfMDMaker.from_yaml(config) carries too (tests/test_maker.py)
    if cache_dir is not None:  # stored with the campaign: its jobs read it from there
        cfg.execution.cache_dir = str(cache_dir.resolve())
    if scratch_dir is not None:
        cfg.execution.scratch_dir = str(scratch_dir.resolve())
    st = open_store_arg(store, cfg.store, must_exist=False)
    start = time.perf_counter()
    flow = prepare_campaign(cfg, st, resume=resume, check_engine=True)
    totals = walker_steps(cfg.walkers, cfg.md.total_steps) or {None: cfg.md.total_steps}  # a bar each
    with _progress(cfg.name, cfg.check_interval, totals) as listener, GracefulStop(stop_after, stop_grace) as stop:
        progress.subscribe(listener)
        try:
            doc = run_campaign(cfg, st, flow, stop=stop)
        except Abandoned as err:
            doc = None
            reason = str(err)
        finally:
            progress.unsubscribe(listener)
    if doc is not None and doc.status == "stopped":
        reason = doc.message or "stopped"
    _summary(st, cfg.name, time.perf_counter() - start, as_json)
    if doc is None or doc.status == "stopped":
        sys.stderr.write(f"otf: stopped ({reason.removeprefix('stopped: ')}); continue with "
                         f"`otf run {config} --resume`\n")
        raise typer.Exit(EXIT_STOPPED)


def _progress(name: str, interval: int, totals: dict[str | None, int]):
    """Context manager yielding an event listener that drives a rich progress bar per walker (``totals``: walker
    name -> its MD steps; ``{None: steps}`` for a campaign without walkers)."""
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
        tasks = {walker: bar.add_task(name if walker is None else f"{name} {walker}", total=total,
                                      interval=interval, checks=0, failed=0, refits=0, dft=0)
                 for walker, total in totals.items()}
        counts = {"checks": 0, "failed": 0, "refits": 0, "dft": 0}
        mine = {name: {"checks": 0, "failed": 0, "refits": 0, "dft": 0} for name in tasks}

        # In a log file (batch job, nohup) the bar is drawn only at the end: write a line per
        # check and refit instead, so that progress can be followed with `tail -f`.
        lines = not console.is_terminal

        def count(name, key: str, n: int = 1) -> None:
            counts[key] += n
            if name in mine:
                mine[name][key] += n

        def listener(event: str, data: dict) -> None:
            name = data.get("walker")
            task = tasks.get(name, next(iter(tasks.values())))
            who = f"{name}: " if name is not None else ""  # one line per walker event in a log file
            total = totals.get(name, next(iter(totals.values())))
            if event == "md_step":
                bar.update(task, completed=data["step"])
            elif event == "check":
                count(name, "checks")
                count(name, "failed", int(not data["passed"]))
                bar.update(task, completed=data["step"], interval=data["new_interval"], **mine.get(name, counts))
                if lines:
                    verdict = "passed" if data["passed"] else "FAILED"
                    console.print(f"{who}step {data['step']}/{total}: check {verdict}, next interval "
                                  f"{data['new_interval']} ({counts['checks']} checks, {counts['refits']} fits, "
                                  f"{counts['dft']} DFT calls, {bar.tasks[0].elapsed or 0:.0f} s)",
                                  highlight=False)
            elif event == "refit":
                count(name, "refits")
                bar.update(task, **mine.get(name, counts))
                if lines:
                    console.print(f"{who}model {data['model_id']} fitted on {data['n_frames']} frames "
                                  f"in {data['seconds'] or 0:.0f} s", highlight=False)
            elif event == "refit_failed" and lines:
                console.print(f"{who}refit failed, going on with {data['model_id']}: {data['error']}", highlight=False)
            elif event == "reference":
                count(name, "dft")
                bar.update(task, **mine.get(name, counts))
                if lines:
                    console.print(f"{who}DFT call {counts['dft']} ({data['kind']}, step {data['step']}) "
                                  f"took {data['seconds']:.0f} s", highlight=False)

        with bar:
            yield listener

    return manager()


def summary_data(st, name: str, seconds: float) -> dict:
    """What the end-of-run summary shows (``otf run --json`` prints it)."""
    doc = st.require_campaign(name)
    checks = st.checks(name)
    split = st.time_split(name)
    labels = [f for f in st.frames_of(name) if f.source != "import"]
    busy = split["reference"] + split["fit"] + split["ml_md"]
    # the split covers the whole campaign, over every run of it (--resume); the wall time of a
    # run killed without a chance to record it is missing from doc.wall_seconds, hence the max
    total = max(doc.wall_seconds, busy)
    model = st.get_model(doc.model_id) if doc.model_id else None
    trained = set(model.training_frame_ids) if model else set()
    walkers = walker_rows(st, name)
    step = sum(w["step"] for w in walkers) if walkers else doc.step  # over all walkers
    return {
        "campaign": name,
        "status": doc.status,
        "step": step,
        "total_steps": doc.total_steps,
        "n_dft_labels": len(labels),
        "dft_calls_per_1000_steps": per_1000_steps(len(labels), step),
        "n_checks": len(checks),
        "n_failed_checks": sum(not c.passed for c in checks),
        "n_guard_trips": sum(c.kind == "guard" for c in checks),
        "n_refits": sum(c.refit for c in checks),
        "n_models": len(st.models(name)),
        "model_id": doc.model_id,
        "model_n_training_frames": model.n_training_frames if model else None,
        "n_dft_labels_trained": sum(f.frame_id in trained for f in labels) if model else None,
        "last_checks": check_time_errors(checks),
        "wall_seconds": {
            "reference": split["reference"], "fit": split["fit"], "ml_md": split["ml_md"],
            "other": max(total - busy, 0.0), "campaign": total, "this_run": seconds,
        },
        "store": st.describe(),
        **({"walkers": walkers} if walkers else {}),
    }


def _summary(st, name: str, seconds: float, as_json: bool = False) -> None:
    from rich.table import Table

    data = summary_data(st, name, seconds)
    if as_json:
        print_json(data)
        return
    table = Table(title=f"campaign {name}: {data['status']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("MD steps", f"{data['step']} / {data['total_steps']}")
    table.add_row("DFT calls (initial + checks)", str(data["n_dft_labels"]))
    table.add_row("checks (failed)", f"{data['n_checks']} ({data['n_failed_checks']})")
    table.add_row("refits", str(data["n_refits"]))
    table.add_row("models", str(data["n_models"]))
    table.add_row("current model", str(data["model_id"]))
    if data["n_dft_labels_trained"] is not None:
        extra = data["model_n_training_frames"] - data["n_dft_labels_trained"]
        table.add_row("DFT labels in its training set",
                      f"{data['n_dft_labels_trained']} / {data['n_dft_labels']}"
                      + (f" (+{extra} imported)" if extra > 0 else ""))
    last = data["last_checks"]
    if last["n"]:
        head = f"last {last['n']} checks at check time"
        table.add_row(f"{head}: frmse", _errors(last, "frmse", "eV/Å"))
        table.add_row(f"{head}: ediff", _errors(last, "ediff", "eV/atom"))
        table.add_row(f"{head}: passed", f"{last['n_passed']}/{last['n']}")
    # what the accuracy above cost: every DFT call (initial MD + checks) over the MD steps done
    table.add_row("DFT calls per 1000 MD steps", _cost(data["dft_calls_per_1000_steps"], data["n_dft_labels"],
                                                       data["step"]))
    for w in data.get("walkers", []):
        table.add_row(f"walker {w['walker']}: DFT calls per 1000 MD steps; frmse at check",
                      f"{_cost(w['dft_calls_per_1000_steps'], w['n_dft_labels'], w['step'])}; "
                      f"{_errors(w['last_checks'], 'frmse', 'eV/Å')}")
    wall = data["wall_seconds"]
    total = wall["campaign"]
    for label, key in (("reference", "reference"), ("fit", "fit"), ("ML-MD", "ml_md"), ("other", "other")):
        share = 100 * wall[key] / total if total > 0 else 0.0
        table.add_row(f"wall time: {label}", f"{wall[key]:.1f} s ({share:.1f} %)")
    table.add_row("wall time: campaign", f"{total:.1f} s ({total / 60:.1f} min)")
    if abs(total - seconds) > 0.1 * total:  # earlier runs of a resumed campaign
        table.add_row("wall time: this run", f"{seconds:.1f} s")
    console = make_console(stderr=True)
    console.print(table)
    console.print(f"results: store {data['store']} — try `otf checks {name}` and `otf models --campaign {name}`")


def _errors(last: dict, key: str, unit: str) -> str:
    """Median and max of an error at check time (a ``last_checks`` object), '-' without checks."""
    if last[f"{key}_median"] is None:
        return "-"
    return f"median {last[f'{key}_median']:.4g} (max {last[f'{key}_max']:.4g}) {unit}"


def _cost(rate: float | None, n_calls: int, steps: int) -> str:
    """DFT calls per 1000 MD steps with the counts it comes from."""
    return "-" if rate is None else f"{rate:.1f} ({n_calls} calls / {steps} steps)"


@app.command()
def checks(campaign: str = typer.Argument(..., help="Campaign name."), store: Optional[str] = StoreOpt,
           as_json: bool = JsonOpt, walker: Optional[str] = WalkerOpt) -> None:
    """One row per DFT check (of every walker in a campaign with walkers, walker by walker, or of --walker)."""
    st = open_store_arg(store)
    st.require_campaign(campaign)
    require_walker(st, campaign, walker)
    found = [c for c in st.checks(campaign) if walker is None or c.walker == walker]
    rows = [check_row(c) for c in sorted(found, key=lambda c: (c.walker or "", c.step))]
    walkers = any(r["walker"] is not None for r in rows)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["walker"] * walkers + ["step", "kind", "trigger", "interval", "ediff", "fmax", "frmse",
                                                  "vmax", "passed", "new_interval", "refit", "model_id",
                                                  "new_model_id"],
                    f"checks of {campaign}{f' walker {walker}' if walker else ''}: errors of the checked model at "
                    "check time (before the frame joins the training set)")


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
        walkers = any(r["trigger_walker"] for r in rows)
        print_table(rows, ["model_id", "parent_model_id", "n_training_frames", "trigger_check_step"]
                    + ["trigger_walker"] * walkers + ["fit_seconds", "created_at"], "models")


@app.command()
def lineage(model_id: str = typer.Argument(..., help="Model id."), store: Optional[str] = StoreOpt,
            as_json: bool = JsonOpt) -> None:
    """Ancestry of a model, newest first."""
    st = open_store_arg(store)
    rows = [model_row(m) for m in st.lineage(model_id)]
    if as_json:
        print_json(rows)
    else:
        walkers = any(r["trigger_walker"] for r in rows)
        print_table(rows, ["model_id", "parent_model_id", "n_training_frames", "trigger_check_step"]
                    + ["trigger_walker"] * walkers + ["fit_seconds", "created_at"], f"lineage of {model_id}")


@app.command()
def status(campaign: Optional[str] = typer.Argument(None, help="Campaign name (default: all)."),
           store: Optional[str] = StoreOpt, as_json: bool = JsonOpt, walker: Optional[str] = WalkerOpt) -> None:
    """Campaigns: progress, errors at check time (last 5 checks), DFT calls per 1000 MD steps, wall time; a
    campaign with walkers also each walker's step, interval, checks, errors and DFT calls."""
    st = open_store_arg(store)
    if walker is not None and campaign is None:
        raise InputError("--walker: give the CAMPAIGN too, e.g. `otf status NAME --walker W`")
    docs = [st.require_campaign(campaign)] if campaign else st.campaigns()
    if campaign:
        require_walker(st, campaign, walker)
    rows = []
    for d in docs:
        split = st.time_split(d.name)
        walkers = walker_rows(st, d.name, walker)
        step = st.campaign_step(d)  # over all walkers, --walker or not
        checks = st.checks(d.name)
        n_dft = sum(st.dft_calls(d.name).values())
        rows.append({
            "campaign": d.name, "status": d.status, "step": step, "total_steps": d.total_steps,
            "model_id": d.model_id, "n_checks": len(checks), "n_models": len(st.models(d.name)),
            "n_dft_labels": n_dft, "dft_calls_per_1000_steps": per_1000_steps(n_dft, step),
            "last_checks": check_time_errors(checks),
            "wall_seconds": d.wall_seconds, "reference_seconds": split["reference"], "fit_seconds": split["fit"],
            "ml_md_seconds": split["ml_md"], "message": d.message,
            **({"walkers": walkers} if walkers else {}),
        })
    chain = []
    if campaign:  # allocation mode: the batch allocations that ran the campaign

        chain = allocation_rows(allocations(st, campaign))
        rows[0]["allocations"] = chain
    if as_json:
        print_json(rows if not campaign else rows[0])
    else:
        print_table([_at_check(r) for r in rows],
                    ["campaign", "status", "step", "total_steps", "model_id", "n_checks", "frmse_at_check",
                     "ediff_at_check", "dft_calls", "dft_per_1000_steps", "n_models", "wall_seconds", "message"],
                    f"campaigns ({_STATUS_NOTE})")
        for row in rows:
            if row.get("walkers"):
                print_table([_at_check(w) for w in row["walkers"]],
                            ["walker", "status", "step", "total_steps", "interval", "n_checks", "n_failed_checks",
                             "n_guard_trips", "n_refits", "pending_refit", "frmse_at_check", "ediff_at_check",
                             "dft_calls", "dft_per_1000_steps"],
                            f"walkers of {row['campaign']}")
        if chain:
            print_table(chain, ["number", "chain", "index", "job_id", "host", "ntasks", "started_at", "ended_at",
                                "steps", "exit_code", "reason", "next_job_id", "log"],
                        f"batch allocations of {campaign} (otf submit --batch)")


_STATUS_NOTE = (f"frmse and ediff at check time: median of the last {LAST_CHECKS} checks, eV/Å and eV/atom; "
                "dft_calls: initial MD labels and every check, also per 1000 MD steps done")


def _at_check(row: dict) -> dict:
    """A status row as the table shows it: median errors at check time and the DFT calls in short columns."""
    last = row["last_checks"]
    return {**row, "frmse_at_check": last["frmse_median"], "ediff_at_check": last["ediff_median"],
            "dft_calls": row["n_dft_labels"], "dft_per_1000_steps": row["dft_calls_per_1000_steps"]}
