"""Model validation, campaign reports and audits: ``otf validate``, ``otf report``, ``otf audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from otf_flows.campaign import CampaignConfig
from otf_flows.commands import (
    JsonOpt,
    StoreOpt,
    WalkerOpt,
    app,
    open_store_arg,
    print_json,
    print_table,
    require_walker,
)
from otf_flows.commands.validation import SeedOpt, ThreadsOpt, WorkdirOpt, run_cv, run_physical
from otf_flows.dirs import scratch_dir
from otf_flows.errors import InputError
from otf_flows.report import write_report
from otf_flows.validation import run_validation
from otf_flows.validation.audit import run_audit

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


@app.command()
def audit(
    campaign: str = typer.Argument(..., help="Campaign name."),
    frames: int = typer.Option(10, "--frames", "-k", min=1, help="ML-MD frames to label (K >= 1): each is one DFT "
                               "call, counted in the campaign's cost."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draw; the same seed draws the same frames, whose "
                             "stored labels are used again."),
    after_step: Optional[int] = typer.Option(None, "--after-step", min=0, help="Warm-up: only frames after this MD "
                                             "step (default: after the first tenth of the steps reached)."),
    walker: Optional[str] = WalkerOpt,
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Directory of the DFT calculations (default: "
                                           "<store>/runs/audit/CAMPAIGN, or $OTF_SCRATCH_DIR/audit/CAMPAIGN)."),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The campaign's reference (DFT) on K ML-MD frames drawn at random between its checks: how many lie outside
    the tolerances, with a binomial 90 % interval: what the checks did not see."""
    st = open_store_arg(store)
    config = CampaignConfig.model_validate(st.require_campaign(campaign).config)
    require_walker(st, campaign, walker)
    root = Path(workdir) if workdir is not None else scratch_dir(f"audit/{campaign}", st)
    result = run_audit(st, config, frames, seed=seed, after_step=after_step, walker=walker, workdir=root,
                       progress=lambda line: typer.echo(line, err=True))
    if as_json:
        print_json(result)
        return
    print_table([{**r, "outside": "yes" if r["outside"] else ""} for r in result["rows"]],
                ["step", "walker", "model_id", "ediff", "fmax", "frmse", "vmax", "outside"],
                f"audit of {campaign}: {result['frames']} of {result['candidates']} frames between checks")
    low, high = result["interval_90"]
    typer.echo(f"{result['frames_outside']} of {result['frames']} frames outside the tolerances "
               f"({100 * result['fraction_outside']:.0f} %, 90 % interval {100 * low:.1f}-{100 * high:.1f} %); "
               f"{result['new_dft_calls']} new DFT calls")
