"""Model validation and campaign reports: ``otf validate``, ``otf report``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from otf_flows.commands import JsonOpt, StoreOpt, app, open_store_arg, print_json, print_table
from otf_flows.report import write_report
from otf_flows.validation import run_validation

#: Validation-document fields left out of ``otf validate --json`` (per-frame lists; they stay in the store).
_BULKY = ("frame_ids", "energy_error_per_atom")


@app.command()
def validate(
    model_id: str = typer.Argument(..., help="Model to validate (see `otf models`)."),
    benchmark: str = typer.Option(..., "--benchmark", help="Benchmark set name; 'checks' = the campaign's DFT "
                                  "check frames the model was not trained on."),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Error metrics of a model on a benchmark set (stored as a validation)."""
    st = open_store_arg(store)
    doc = run_validation(st, model_id, benchmark)
    out = {k: v for k, v in doc.items() if k not in _BULKY}
    if as_json:
        print_json(out)
        return
    sets = [("all", out)]
    if len(out["by_config_type"]) > 1:
        sets += [(f"config_type {t}", m) for t, m in out["by_config_type"].items()]
    print_table([_row(name, m) for name, m in sets], list(_row("", out)),
                f"{model_id} on {benchmark}")


def _row(name: str, m: dict) -> dict:
    """Table cells of one metrics mapping (energies and virials in meV/atom)."""

    def milli(value):
        return None if value is None else 1000.0 * value

    return {
        "set": name,
        "frames": m["n_frames"],
        "E RMSE (meV/at)": milli(m["energy_rmse_per_atom"]),
        "E MAE (meV/at)": milli(m["energy_mae_per_atom"]),
        "F RMSE (eV/Å)": m["force_rmse"],
        "F MAE (eV/Å)": m["force_mae"],
        "V RMSE (meV/at)": milli(m["virial_rmse_per_atom"]),
    }


@app.command()
def report(
    campaign: str = typer.Argument(..., help="Campaign name."),
    out: Path = typer.Option(..., "--out", help="Directory for index.html and the PNG figures (created)."),
    store: Optional[str] = StoreOpt,
) -> None:
    """Plots and a one-page HTML summary of a campaign."""
    st = open_store_arg(store)
    page = write_report(st, campaign, out)
    typer.echo(f"report: {page}", err=True)
