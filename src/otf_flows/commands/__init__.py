"""The ``otf`` Typer app and what its command modules share (store opening, JSON, tables)."""

from __future__ import annotations

import json
import logging
import statistics
import sys

import typer

from otf_flows.errors import InputError
from otf_flows.schedule import per_1000_steps
from otf_flows.store import OtfStore, resolve_location

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
WalkerOpt = typer.Option(None, "--walker", help="Only this walker of a campaign with walkers.")


def require_walker(st, campaign: str, walker: str | None) -> None:
    """``--walker``: None, or a walker of ``campaign`` (an :class:`InputError` naming the walkers otherwise)."""
    if walker is None:
        return
    names = [w.walker for w in st.walkers(campaign)]
    if walker not in names:
        listed = ", ".join(names) if names else "none: the campaign has no walkers"
        raise InputError(f"--walker: {walker!r} is not a walker of campaign {campaign!r} (walkers: {listed})")


#: The summary and `otf status` show the errors at check time of this many most recent checks.
LAST_CHECKS = 5


def check_time_errors(checks: list) -> dict:
    """Errors at check time of the :data:`LAST_CHECKS` most recent ``checks``: median and max, and how many passed."""
    recent = sorted(checks, key=lambda c: c.created_at)[-LAST_CHECKS:]

    def median_max(values: list) -> tuple[float | None, float | None]:
        values = [v for v in values if v is not None]
        return (float(statistics.median(values)), float(max(values))) if values else (None, None)

    frmse_median, frmse_max = median_max([c.frmse for c in recent])
    ediff_median, ediff_max = median_max([c.ediff for c in recent])
    return {
        "n": len(recent), "n_passed": sum(c.passed for c in recent),
        "frmse_median": frmse_median, "frmse_max": frmse_max,
        "ediff_median": ediff_median, "ediff_max": ediff_max,
    }


def walker_rows(st, campaign: str, walker: str | None = None) -> list[dict]:
    """One row per walker of ``campaign``: its state, step, interval, checks, DFT calls per 1000 of its MD
    steps and its errors at check time ([] without walkers)."""
    checks = st.checks(campaign)
    calls = st.dft_calls(campaign)
    rows = []
    for w in st.walkers(campaign):
        if walker is not None and w.walker != walker:
            continue
        own = [c for c in checks if c.walker == w.walker]
        rows.append({
            "walker": w.walker, "status": w.status, "step": w.step, "total_steps": w.total_steps,
            "interval": w.interval, "n_checks": len(own), "n_failed_checks": sum(not c.passed for c in own),
            "n_guard_trips": sum(c.kind == "guard" for c in own), "n_refits": sum(c.refit for c in own),
            "pending_refit": w.pending_refit, "n_dft_labels": calls.get(w.walker, 0),
            "dft_calls_per_1000_steps": per_1000_steps(calls.get(w.walker, 0), w.step),
            "last_checks": check_time_errors(own),
        })
    return rows


def open_store_arg(location: str | None, config_store: str | None = None, must_exist: bool = True):
    """The store named by ``--store`` / ``OTF_STORE`` / the YAML; an embedded one must exist unless told."""
    loc = resolve_location(location, config_store)
    store = OtfStore(loc)
    if must_exist and store.kind == "embedded" and not (store.path / "db").exists():
        raise InputError(f"--store: {store.path} holds no otf store (run a campaign first or pass --store)")
    return store


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(rows: list[dict], columns: list[str], title: str) -> None:
    """A rich table of ``rows`` on stdout."""
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[fmt(row[c]) for c in columns])
    make_console().print(table)


def make_console(stderr: bool = False):
    """A rich console; into a pipe or a log file it is wide enough not to cut table cells
    (rich assumes 80 columns there)."""
    import os

    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200
    return console


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def check_row(c) -> dict:
    """A check as `otf checks` shows it; the errors are the checked model's, at check time."""
    return {
        "walker": getattr(c, "walker", None),
        "step": c.step,
        "frame_step": getattr(c, "frame_step", None),
        "kind": c.kind,
        "trigger": getattr(c, "trigger", None),
        "interval": c.interval,
        "ediff": c.ediff,
        "fmax": c.fmax,
        "frmse": c.frmse,
        "vmax": c.vmax,
        "uncertainty": getattr(c, "uncertainty", None),
        "passed": c.passed,
        "new_interval": c.new_interval,
        "refit": c.refit,
        "model_id": c.model_id,
        "new_model_id": c.new_model_id,
        "guard_reason": c.guard_reason,
        "guard_limit": getattr(c, "guard_limit", None),
        "reference_agreed": getattr(c, "reference_agreed", None),
        "rolled_back_to": c.rolled_back_to,
        "refit_error": c.refit_error,
        "reference_seconds": c.reference_seconds,
    }


def model_row(m) -> dict:
    return {
        "model_id": m.model_id,
        "version": m.version,
        "campaign": m.campaign,
        "parent_model_id": m.parent_model_id,
        "n_training_frames": m.n_training_frames,
        "trigger_check_step": m.trigger_check_step,
        "trigger_walker": getattr(m, "trigger_walker", None),
        "merged_check_ids": getattr(m, "merged_check_ids", []),
        "fit_seconds": m.fit_seconds,
        "created_at": m.created_at.isoformat(),
        "warnings": m.warnings,
    }
