"""Validation studies of one model: ``otf validate --cv``/``--physical``, ``otf learning-curve``,
``otf holes``, ``otf model-card`` (seed 001's checklist)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from otf_flows.commands import JsonOpt, StoreOpt, app, open_store_arg, print_json, print_table
from otf_flows.errors import InputError

SeedOpt = typer.Option(0, "--seed", help="Seed of the shuffle into folds / subsets (and of the random structures).")
WorkdirOpt = typer.Option(None, "--workdir", help="Directory of the fits and calculations (default: "
                          "<store>/runs/validation/MODEL, or $OTF_SCRATCH_DIR/validation/MODEL).")
ThreadsOpt = typer.Option(None, "--threads", help="Threads of each fit (default: the backend's, all cores).")


def work_dir(store, model_id: str, workdir: Path | None, what: str) -> Path:
    """Where a study of ``model_id`` runs its fits or calculations."""
    from otf_flows.dirs import scratch_dir

    root = Path(workdir) if workdir is not None else scratch_dir(f"validation/{model_id}", store)
    return root / what


def _milli(value):
    return None if value is None else 1000.0 * value


def run_cv(store_arg: str | None, model_id: str, k: int, seed: int, workdir: Path | None, threads: int | None,
           as_json: bool) -> None:
    """``otf validate MODEL --cv K``."""
    from otf_flows.validation.refit import cross_validate

    if k < 2:
        raise InputError(f"--cv: K must be at least 2, got {k}")
    st = open_store_arg(store_arg)
    st.get_model(model_id)
    doc = cross_validate(st, model_id, k, work_dir(st, model_id, workdir, f"cv{k}"), seed=seed, num_threads=threads)
    if as_json:
        print_json({key: v for key, v in doc.items() if key not in ("by_config_type",)})
        return
    rows = [{"set": f"fold {f['fold'] + 1}", "train": f["n_train"], "test": f["n_test"],
             "E RMSE (meV/at)": _milli(f["energy_rmse_per_atom"]), "F RMSE (eV/Å)": f["force_rmse"],
             "F MAE (eV/Å)": f["force_mae"]} for f in doc["folds"]]
    rows.append({"set": "pooled", "train": "-", "test": doc["n_frames"],
                 "E RMSE (meV/at)": _milli(doc["energy_rmse_per_atom"]), "F RMSE (eV/Å)": doc["force_rmse"],
                 "F MAE (eV/Å)": doc["force_mae"]})
    s = doc["spread"]
    rows.append({"set": "mean ± std", "train": "-", "test": "-",
                 "E RMSE (meV/at)": f"{1000 * s['energy_rmse_per_atom']['mean']:.3g} ± "
                                    f"{1000 * s['energy_rmse_per_atom']['std']:.2g}",
                 "F RMSE (eV/Å)": f"{s['force_rmse']['mean']:.3g} ± {s['force_rmse']['std']:.2g}",
                 "F MAE (eV/Å)": f"{s['force_mae']['mean']:.3g} ± {s['force_mae']['std']:.2g}"})
    print_table(rows, list(rows[0]), f"{model_id}: {k}-fold cross-validation (stored as {doc['validation_id']})")
    typer.echo(f"definitions: {doc['definitions']['cv']}", err=True)


@app.command("learning-curve")
def learning_curve_cmd(
    model_id: str = typer.Argument(..., help="Model whose training frames are subsampled (see `otf models`)."),
    benchmark: str = typer.Option(..., "--benchmark", help="Held-out set: a benchmark set name, or 'checks' = the "
                                  "campaign's check frames the model was not trained on (the later half of its "
                                  "check frames when it was trained on all of them; they are left out of every "
                                  "subset)."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Training-set sizes, e.g. 2,4,8 (default: up to 5 "
                                        "sizes from 2 to all, log-spaced)."),
    seed: int = SeedOpt, workdir: Optional[Path] = WorkdirOpt, threads: Optional[int] = ThreadsOpt,
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Error on a fixed held-out set against training-set size: sub-models refitted with the model's own
    settings on nested random subsets of its training frames (stored as a validation)."""
    from otf_flows.validation.refit import learning_curve, parse_sizes

    wanted = parse_sizes(sizes)
    st = open_store_arg(store)
    st.get_model(model_id)
    doc = learning_curve(st, model_id, benchmark, work_dir(st, model_id, workdir, f"learning-curve-{benchmark}"),
                         sizes=wanted, seed=seed, num_threads=threads)
    if as_json:
        print_json({k: v for k, v in doc.items() if k != "held_out_frame_ids"}
                   | {"points": [{k: v for k, v in p.items() if k != "frame_ids"} for p in doc["points"]]})
        return
    rows = [{"training frames": p["n_train"], "E RMSE (meV/at)": _milli(p["energy_rmse_per_atom"]),
             "E MAE (meV/at)": _milli(p["energy_mae_per_atom"]), "F RMSE (eV/Å)": p["force_rmse"],
             "F MAE (eV/Å)": p["force_mae"], "fit (s)": p["fit_seconds"]} for p in doc["points"]]
    print_table(rows, list(rows[0]), f"{model_id}: learning curve on {doc['held_out_description']}")


@app.command("model-card")
def model_card_cmd(
    model_id: str = typer.Argument(..., help="Model (see `otf models`)."),
    out: Path = typer.Option(..., "--out", help="Directory for model_card.html, model_card.json and the PNGs."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Seed 001's checklist for one model as HTML + JSON: training data, cross-validation, external test
    sets, learning curves, errors at check time, physical benchmarks against DFT, hole search, lineage."""
    import json

    from otf_flows.validation.model_card import write_model_card

    st = open_store_arg(store)
    st.get_model(model_id)
    page = write_model_card(st, model_id, out)
    if as_json:
        print_json(json.loads((out / "model_card.json").read_text()))
    else:
        typer.echo(f"model card: {page}", err=True)


def run_physical(store_arg: str | None, model_id: str, prop: str, structure: Path | None, workdir: Path | None,
                 model_only: bool, as_json: bool) -> None:
    """``otf validate MODEL --physical eos|phonons|elastic --structure FILE``."""
    raise InputError("--physical is not available yet")
