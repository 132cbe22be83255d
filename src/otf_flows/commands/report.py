"""Model validation and campaign reports: ``otf validate``, ``otf report``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from otf_flows.commands import JsonOpt, StoreOpt, app, open_store_arg, print_json, print_table
from otf_flows.commands.validation import SeedOpt, ThreadsOpt, WorkdirOpt, run_cv, run_physical
from otf_flows.errors import InputError
from otf_flows.report import write_report
from otf_flows.validation import run_validation

#: Validation-document fields left out of ``otf validate --json`` (per-frame lists; they stay in the store).
_BULKY = ("frame_ids", "energy_error_per_atom")


@app.command()
def validate(
    model_id: str = typer.Argument(..., help="Model to validate (see `otf models`)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Benchmark set name; 'checks' = the "
                                            "campaign's DFT check frames the model was not trained on."),
    cv: Optional[int] = typer.Option(None, "--cv", help="K: k-fold cross-validation on the model's training frames "
                                     "(K >= 2), refitted with its own settings."),
    physical: Optional[str] = typer.Option(None, "--physical", help="Physical benchmark against the campaign's DFT "
                                           "reference: eos, phonons or elastic (needs --structure)."),
    structure: Optional[Path] = typer.Option(None, "--structure", help="Structure file of --physical (e.g. a "
                                             "diamond Si cell: cif, POSCAR, xyz)."),
    seed: int = SeedOpt, workdir: Optional[Path] = WorkdirOpt, threads: Optional[int] = ThreadsOpt,
    model_only: bool = typer.Option(False, "--model-only", help="--physical: the model's side only, no DFT."),
    supercell: Optional[str] = typer.Option(None, "--supercell", help="--physical phonons: supercell of the "
                                            "structure, e.g. 2,2,2 (the default)."),
    points: Optional[int] = typer.Option(None, "--points", help="--physical eos: strained cells (5-15, default 7)."),
    kpoints: Optional[str] = typer.Option(None, "--kpoints", help="--physical: k-point grid of the DFT single points "
                                          "(default: the reference's k-point density carried over to the cell)."),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Error metrics of a model on a benchmark set, k-fold cross-validation (--cv K), or a physical benchmark
    against DFT (--physical eos|phonons|elastic --structure FILE); each is stored as a validation."""
    given = [name for name, v in (("--benchmark", benchmark), ("--cv", cv), ("--physical", physical)) if v is not None]
    if len(given) != 1:
        raise InputError(f"give exactly one of --benchmark, --cv, --physical (got {', '.join(given) or 'none'})")
    if cv is not None:
        return run_cv(store, model_id, cv, seed, workdir, threads, as_json)
    if physical is not None:
        return run_physical(store, model_id, physical, structure, workdir, model_only, as_json, supercell, kpoints,
                            points)
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
