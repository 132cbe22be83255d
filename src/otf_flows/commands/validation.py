"""Validation studies of one model: ``otf validate --cv``/``--physical``, ``otf learning-curve``,
``otf holes``, ``otf model-card`` (seed 001's checklist)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from otf_flows.campaign import PHYSICAL_PROPERTIES, PhysicalBenchmark
from otf_flows.commands import JsonOpt, StoreOpt, app, open_store_arg, print_json, print_table
from otf_flows.dirs import scratch_dir
from otf_flows.errors import InputError
from otf_flows.jobs.holes import hole_search_flow
from otf_flows.jobs.physical_flow import physical_flow
from otf_flows.validation.holes import HoleSearch
from otf_flows.validation.model_card import write_model_card
from otf_flows.validation.physical import campaign_context, load_structure
from otf_flows.validation.refit import cross_validate, learning_curve, parse_sizes

SeedOpt = typer.Option(0, "--seed", help="Seed of the shuffle into folds / subsets (and of the random structures).")
WorkdirOpt = typer.Option(None, "--workdir", help="Directory of the fits and calculations (default: "
                          "<store>/runs/validation/MODEL, or $OTF_SCRATCH_DIR/validation/MODEL).")
ThreadsOpt = typer.Option(None, "--threads", help="Threads of each fit (default: the backend's, all cores).")


def work_dir(store, model_id: str, workdir: Path | None, what: str) -> Path:
    """Where a study of ``model_id`` runs its fits or calculations."""

    root = Path(workdir) if workdir is not None else scratch_dir(f"validation/{model_id}", store)
    return root / what


def _milli(value):
    return None if value is None else 1000.0 * value


def run_cv(store_arg: str | None, model_id: str, k: int, seed: int, workdir: Path | None, threads: int | None,
           as_json: bool) -> None:
    """``otf validate MODEL --cv K``."""

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


    st = open_store_arg(store)
    st.get_model(model_id)
    page = write_model_card(st, model_id, out)
    if as_json:
        print_json(json.loads((out / "model_card.json").read_text()))
    else:
        typer.echo(f"model card: {page}", err=True)



def store_location(store) -> str:
    """The store's location as jobs on any node and in any directory open it."""
    return str(store.path) if store.kind == "embedded" else store.location


def _triple(text: str | None, option: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"{option}: {text!r} is not three positive whole numbers such as 2,2,2")
    return tuple(int(p) for p in parts)


def run_physical(store_arg: str | None, model_id: str, prop: str, structure: Path | None, workdir: Path | None,
                 model_only: bool, as_json: bool, supercell: str | None = None, kpoints: str | None = None,
                 points: int | None = None) -> None:
    """``otf validate MODEL --physical eos|phonons|elastic --structure FILE``: the atomate2 flows of the
    model and of the campaign's DFT reference, run here (``run_locally``) against the store."""
    from jobflow import run_locally


    if prop not in PHYSICAL_PROPERTIES:
        raise InputError(f"--physical: {prop!r} is not one of {', '.join(PHYSICAL_PROPERTIES)}")
    if structure is None:
        raise InputError("--physical needs --structure FILE (e.g. a primitive diamond Si cell)")
    cells = _triple(supercell, "--supercell")
    if points is not None and not 5 <= points <= 15:
        raise InputError(f"--points: {points} is outside 5..15")
    grid = _triple(kpoints, "--kpoints")
    crystal = load_structure(structure)
    st = open_store_arg(store_arg)
    st.get_model(model_id)
    config, reference_cell = campaign_context(st, model_id)
    if config is None and not model_only:
        raise InputError(f"model {model_id!r} belongs to no campaign, so there is no DFT reference: pass --model-only")
    bench = PhysicalBenchmark(property=prop, structure=str(structure), label=structure.stem, dft=not model_only,
                              **({"supercell": cells} if cells else {}), **({"kpoints": grid} if grid else {}),
                              **({"n_points": points} if points else {}))
    flow = physical_flow(bench, crystal, store_location(st), model_id, config, reference_cell)
    root = work_dir(st, model_id, workdir, f"physical-{prop}-{structure.stem}")
    root.mkdir(parents=True, exist_ok=True)
    typer.echo(f"running the {prop} flow of {model_id}{'' if model_only else ' and of its DFT reference'} in {root}",
               err=True)
    responses = run_locally(flow, store=st.jobstore, root_dir=root, create_folders=True, ensure_success=True,
                            log=False)
    out = responses[flow.output.uuid][1].output
    doc = st.validations(model_id, f"physical:{prop}:{bench.label}")[0]
    if as_json:
        print_json({k: v for k, v in doc.items() if k not in ("model", "dft", "structure")})
        return
    rows = [{"quantity": k, "model": v["model"], "DFT": v["dft"], "unit": v["unit"]} for k, v in out["summary"].items()]
    print_table(rows, ["quantity", "model", "DFT", "unit"], f"{model_id}: {prop} of {bench.label}")
    for key, value in out["differences"].items():
        typer.echo(f"model - DFT {key}: {value if not isinstance(value, float) else f'{value:.4g}'}", err=True)
    for note in doc["notes"]:
        typer.echo(f"note: {note}", err=True)


@app.command("holes")
def holes_cmd(
    model_id: str = typer.Argument(..., help="Model (see `otf models`)."),
    n: int = typer.Option(20, "--n", help="Random structures to relax."),
    margin: float = typer.Option(0.1, "--margin", help="Flag structures below the campaign's lowest DFT energy "
                                 "per atom by more than this (eV/atom); a structure the model places more than "
                                 "|margin| below its own DFT energy is a hole."),
    atoms: Optional[int] = typer.Option(None, "--atoms", help="Atoms per structure (default: the campaign's cell)."),
    min_distance: Optional[float] = typer.Option(None, "--min-distance", help="Smallest distance between atoms of a "
                                                 "random structure (Å; default 0.85 x the shortest in the training "
                                                 "frames)."),
    steps: int = typer.Option(300, "--steps", help="Relaxation steps at most."),
    dft_check: bool = typer.Option(False, "--dft-check", help="DFT single points of the lowest flagged structures."),
    max_dft: int = typer.Option(3, "--max-dft", help="With --dft-check: DFT single points at most."),
    seed: int = SeedOpt, workdir: Optional[Path] = WorkdirOpt,
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Holes in the potential (seed 001, Sec. V C): relax random structures of the campaign's composition and
    density with the model and flag those below the campaign's lowest DFT energy per atom by more than a margin."""
    from jobflow import run_locally
    from pydantic import ValidationError


    try:
        settings = HoleSearch(n_structures=n, n_atoms=atoms, margin_eV_per_atom=margin, min_distance_A=min_distance,
                              max_steps=steps, seed=seed, dft_check=dft_check, max_dft=max_dft)
    except ValidationError as err:
        e = err.errors()[0]
        names = {"n_structures": "--n", "n_atoms": "--atoms", "margin_eV_per_atom": "--margin",
                 "min_distance_A": "--min-distance", "max_steps": "--steps", "max_dft": "--max-dft"}
        raise InputError(f"{names.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']} (got {e.get('input')!r})") from None
    st = open_store_arg(store)
    st.get_model(model_id)
    config, _ = campaign_context(st, model_id)
    if dft_check and config is None:
        raise InputError(f"--dft-check: model {model_id!r} belongs to no campaign, so there is no DFT reference")
    root = work_dir(st, model_id, workdir, "holes")
    root.mkdir(parents=True, exist_ok=True)
    flow = hole_search_flow(settings, store_location(st), model_id, config)
    run_locally(flow, store=st.jobstore, root_dir=root, create_folders=True, ensure_success=True, log=False)
    doc = st.validations(model_id, "holes")[0]
    if as_json:
        print_json({k: v for k, v in doc.items() if k != "structures"}
                   | {"structures": [{k: v for k, v in r.items() if k not in ("positions", "cell", "numbers")}
                                     for r in doc["structures"]]})
        return
    rows = [{"#": r["index"], "E model (eV/at)": f"{r['energy_per_atom']:.4f}", "V (Å³/at)": r["volume_per_atom"],
             "min d (Å)": r["min_distance_A"], "steps": r["steps"], "flagged": r["flagged"],
             "E DFT (eV/at)": None if r.get("dft_energy_per_atom") is None else f"{r['dft_energy_per_atom']:.4f}",
             "verdict": r.get("verdict")}
            for r in sorted(doc["structures"], key=lambda r: r["energy_per_atom"])]
    print_table(rows, list(rows[0]), f"{model_id}: {doc['n_structures']} random {doc['formula']} structures")
    typer.echo(f"lowest model energy {doc['lowest_energy_per_atom']:.4f} eV/atom; lowest DFT energy of the campaign "
               f"{doc['dft_lowest_energy_per_atom']:.4f} eV/atom; {doc['n_flagged']} flagged (margin "
               f"{doc['margin_eV_per_atom']} eV/atom)", err=True)
