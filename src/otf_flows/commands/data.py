"""Data commands: export training data and trajectories, fit outside a campaign, benchmark sets, export a model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from otf_flows.campaign import GAP_ONLY_REFIT_KEYS, Refit
from otf_flows.commands import (
    JsonOpt,
    StoreOpt,
    WalkerOpt,
    app,
    model_row,
    open_store_arg,
    print_json,
    print_table,
    require_walker,
)
from otf_flows.data import frames_from_xyz
from otf_flows.errors import InputError, NotFoundError, StoreError
from otf_flows.fit_export import LAMMPS_DATA, fit_and_register
from otf_flows.fit_export import export_model as export
from otf_flows.frames import frame_level_of_theory, frame_to_atoms
from otf_flows.ml.gap.presets import preset_names
from otf_flows.ml.gap.settings import GapModel
from otf_flows.ml.mace.settings import MaceModel
from otf_flows.trajectory import campaign_segments, segment_frames
from otf_flows.yaml_config import error_line, load_yaml

data_app = typer.Typer(help="Training data.", no_args_is_help=True)
benchmark_app = typer.Typer(help="Benchmark sets (named frames with reference labels).", no_args_is_help=True)
trajectory_app = typer.Typer(help="MD trajectories of campaigns.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(trajectory_app, name="trajectory")
app.add_typer(benchmark_app, name="benchmark")

EnergyKey = typer.Option("REF_energy", "--energy-key", help="extxyz info key of the reference energy (eV).")
ForcesKey = typer.Option("REF_forces", "--forces-key", help="extxyz array key of the reference forces (eV/Å).")
VirialKey = typer.Option("REF_virial", "--virial-key", help="extxyz info key of the reference virial (eV).")
ConfigTypeKey = typer.Option("config_type", "--config-type-key", help="extxyz info key of the configuration type.")


@data_app.command("export")
def data_export(campaign: str = typer.Argument(..., help="Campaign name."),
                out: Path = typer.Argument(..., help="Output extxyz file."),
                store: Optional[str] = StoreOpt) -> None:
    """Write a campaign's training frames as extxyz (REF_energy, REF_forces, REF_virial, config_type)."""
    from ase.io import write

    st = open_store_arg(store)
    st.require_campaign(campaign)
    frames = st.training_frames(campaign)
    if out.suffix not in (".xyz", ".extxyz"):
        raise InputError(f"OUT: {out} must end in .xyz or .extxyz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    write(tmp, [frame_to_atoms(f) for f in frames], format="extxyz")
    tmp.replace(out)
    typer.echo(f"wrote {len(frames)} training frames of {campaign} to {out}", err=True)


def frame_row(frame) -> dict:
    """A frame as ``otf data frames`` shows it: where it is from and how its labels were made (no arrays)."""
    prov = frame.provenance
    return {
        "frame_id": frame.frame_id, "campaign": frame.campaign, "source": frame.source, "md_step": frame.md_step,
        "n_atoms": len(frame.numbers), "energy": frame.energy, "training": frame.campaign in frame.training_in,
        "flags": frame.flags, "level_of_theory": frame_level_of_theory(frame),
        "code": prov.code if prov else None, "code_version": prov.code_version if prov else None,
        "scf_steps": prov.scf_steps if prov else None,
        "n_corrections": len(prov.corrections) if prov else None,
        "wall_seconds": prov.wall_seconds if prov else None,
        "run_dir": prov.run_dir if prov else None, "source_file": prov.source_file if prov else None,
        "provenance": prov.model_dump(mode="json") if prov else None,
    }


@data_app.command("frames")
def data_frames(campaign: str = typer.Argument(..., help="Campaign name."),
                source: Optional[str] = typer.Option(None, "--source", help="Only initial_md, check or import frames."),
                store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """The campaign's labelled frames, by MD step: level of theory, code and version, SCF steps, custodian
    corrections, run directory and wall time of each reference calculation (``--json``: all of the provenance)."""
    st = open_store_arg(store)
    st.require_campaign(campaign)
    rows = [frame_row(f) for f in st.frames_of(campaign) if source is None or f.source == source]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["md_step", "source", "training", "level_of_theory", "code_version", "scf_steps",
                           "n_corrections", "wall_seconds", "frame_id"], f"frames of {campaign}")


@data_app.command("frame")
def data_frame(frame_id: str = typer.Argument(..., help="Frame id (otf data frames shows them)."),
               store: Optional[str] = StoreOpt) -> None:
    """One frame's whole document as JSON: labels, structure (pymatgen dict) and provenance."""
    st = open_store_arg(store)
    try:
        frame = st.get_frames([frame_id])[0]
    except StoreError:
        raise NotFoundError(f"frame {frame_id!r} is not in {st.describe()}") from None
    print_json(frame.model_dump(mode="json"))


CampaignArg = typer.Argument(..., help="Campaign name.")
TrajectoryOut = typer.Argument(..., help="Output extxyz file (its directory must exist).")
RolledBackOpt = typer.Option(False, "--include-rolled-back",
                             help="Also segments abandoned by a rollback (info rolled_back=True).")


@trajectory_app.command("export")
def trajectory_export(campaign: str = CampaignArg, out: Path = TrajectoryOut,
                      include_rolled_back: bool = RolledBackOpt, store: str | None = StoreOpt,
                      walker: str | None = WalkerOpt) -> None:
    """Write a campaign's MD frames in MD-step order as extxyz, with the driving model's energy and forces.

    Each frame has the driver's energy and forces and info md_step, segment_start_step, driver
    (model, or reference for the initial reference-driven MD), model_id (ML-MD frames) and rolled_back;
    in a campaign with walkers also walker (the frames of each walker in turn, or of --walker only).
    """
    from ase.io import write

    st = open_store_arg(store)
    doc = st.require_campaign(campaign)
    if out.suffix not in (".xyz", ".extxyz"):
        raise InputError(f"OUT: {out} must end in .xyz or .extxyz")
    if not out.parent.is_dir():
        raise InputError(f"OUT: directory {out.parent} does not exist")
    require_walker(st, campaign, walker)
    segments = [s for s in campaign_segments(st, campaign, walker) if s.trajectory]
    if not segments:
        interval = doc.config.get("md", {}).get("trajectory_interval")
        why = "md.trajectory_interval is 0" if interval == 0 else "no MD segment has run yet"
        raise InputError(f"campaign {campaign!r} has no trajectory frames ({why}); set md.trajectory_interval "
                         "(e.g. 10) in the campaign YAML to keep them")
    kept = [s for s in segments if include_rolled_back or s.status == "accepted"]
    left_out = [s for s in segments if s not in kept]
    frames = segment_frames(st, kept)
    if not frames:
        raise InputError(f"campaign {campaign!r} has no accepted trajectory frames yet "
                         f"({len(left_out)} segments off the trajectory: pass --include-rolled-back)")
    tmp = out.with_name(out.name + ".part")
    write(tmp, frames, format="extxyz")
    tmp.replace(out)

    def segments_(n: int, what: str) -> str:
        return f"{n} {what}segment{'s' if n != 1 else ''}"

    if include_rolled_back:
        n_rolled = sum(s.status == "rolled_back" for s in kept)
        note = f" ({segments_(n_rolled, 'rolled-back ')} flagged rolled_back=True)"
    else:
        n_pending = sum(s.status == "pending" for s in left_out)
        note = f"; left out {segments_(len(left_out) - n_pending, 'rolled-back ')}"
        note += f" and {segments_(n_pending, 'not yet checked ')}" if n_pending else ""
    typer.echo(f"wrote {len(frames)} frames of {segments_(len(kept), '')} of {campaign} to {out}{note}", err=True)


@app.command()
def fit(train: Path = typer.Argument(..., help="Training extxyz file."),
        out: Path = typer.Option(..., "--out", help="Directory for the model files (new or empty)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML with a refit: and/or model: block "
                                              "(e.g. a campaign)."),
        backend: Optional[str] = typer.Option(None, "--backend", help="gap or mace (default: the config's "
                                              "model.backend, else gap)."),
        committee: Optional[int] = typer.Option(None, "--committee", help="MACE: members of a committee (1-4)."),
        name: Optional[str] = typer.Option(None, "--name", help="Model id to register (default: fit-<hash>)."),
        preset: Optional[str] = typer.Option(None, "--preset", help="GAP descriptor preset: fast (the default), "
                                             "default, l-si, al2o3, a-c."),
        default_sigma: Optional[str] = typer.Option(None, "--default-sigma", help="gap_fit default_sigma."),
        descriptor_str: Optional[str] = typer.Option(None, "--descriptor-str", help="gap_fit descriptor string."),
        extra_gap_opts: Optional[str] = typer.Option(None, "--extra-gap-opts", help="Extra gap_fit options."),
        e0: Optional[str] = typer.Option(None, "--e0", help="Isolated-atom energies, e.g. 'Si:-158.5'."),
        e0_method: Optional[str] = typer.Option(None, "--e0-method", help="average or isolated."),
        energy_key: str = EnergyKey, forces_key: str = ForcesKey, virial_key: str = VirialKey,
        config_type_key: str = ConfigTypeKey,
        store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Fit a GAP or (``--backend mace``) a MACE outside a campaign and register it in the store.

    GAP settings come from the options and the config's ``refit:`` block; MACE settings from the
    config's ``model:`` block (keys of ``model: {backend: mace}``, e.g. epochs, channels, committee).
    """
    import yaml
    from pydantic import ValidationError

    if preset is not None and preset not in preset_names():
        raise InputError(f"--preset: {preset!r} is not one of {', '.join(preset_names())}")
    refit_data: dict = {}
    model_data: dict = {}
    if config is not None:
        if not config.is_file():
            raise InputError(f"--config: {config} does not exist")
        try:
            loaded = load_yaml(config.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise InputError(f"--config: {config} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"--config: {config} is not a mapping")
        refit_data = dict(loaded.get("refit", {} if "model" in loaded else loaded))
        refit_data.pop("previous_data", None)
        model_data = dict(loaded.get("model") or {})
        if model_data.get("foundation_model") and not Path(model_data["foundation_model"]).is_absolute():
            model_data["foundation_model"] = str(config.parent / model_data["foundation_model"])
    for key, value in (("default_sigma", default_sigma), ("descriptor_str", descriptor_str),
                       ("extra_gap_opts", extra_gap_opts), ("e0", e0), ("e0_method", e0_method)):
        if value is not None:
            refit_data[key] = value
    backend = backend or model_data.get("backend", "gap")
    if backend not in ("gap", "mace"):
        raise InputError(f"--backend: {backend!r} is not one of gap, mace")
    if model_data.get("backend", backend) != backend:
        model_data = {}  # the config's model block is of the other backend
    if backend == "mace":
        gap_only = [k for k in GAP_ONLY_REFIT_KEYS if k in refit_data] + (["preset"] if preset is not None else [])
        if gap_only:
            raise InputError(f"{gap_only[0]} is a GAP setting; --backend mace does not use it")
        if committee is not None:
            model_data["committee"] = committee
    elif committee is not None:
        raise InputError("--committee: a MACE setting; use it with --backend mace")
    try:
        refit = Refit.model_validate(refit_data)
        if backend == "mace":
            ml_model = MaceModel.model_validate({**model_data, "backend": "mace"})
        else:
            ml_model = GapModel.model_validate({**model_data, "backend": "gap", **({"preset": preset} if preset else {})})
    except ValidationError as err:
        raise InputError(error_line(err, "refit" if err.title == "Refit" else "model")) from None
    if getattr(ml_model, "foundation_model", None) and not Path(ml_model.foundation_model).is_file():
        raise InputError(f"model.foundation_model: {ml_model.foundation_model!r} is not a file")
    frames = frames_from_xyz(train, energy_key=energy_key, forces_key=forces_key, virial_key=virial_key,
                             config_type_key=config_type_key)
    st = open_store_arg(store, must_exist=False)
    model = fit_and_register(st, frames, refit, out, model=ml_model, model_id=name)
    if as_json:
        print_json(model_row(model))
    else:
        typer.echo(f"fitted {model.model_id} on {model.n_training_frames} frames in {model.fit_seconds:.1f} s; "
                   f"files in {out}", err=True)


@benchmark_app.command("add")
def benchmark_add(name: str = typer.Argument(..., help="Benchmark set name."),
                  file: Path = typer.Argument(..., help="Labelled extxyz file."),
                  description: str = typer.Option("", "--description", help="Free text."),
                  energy_key: str = EnergyKey, forces_key: str = ForcesKey, virial_key: str = VirialKey,
                  config_type_key: str = ConfigTypeKey, store: Optional[str] = StoreOpt,
                  as_json: bool = JsonOpt) -> None:
    """Register a benchmark set from an extxyz file."""
    frames = frames_from_xyz(file, energy_key=energy_key, forces_key=forces_key, virial_key=virial_key,
                             config_type_key=config_type_key)
    st = open_store_arg(store, must_exist=False)
    doc = st.add_benchmark(name, frames, source=str(file), description=description)
    row = {k: doc[k] for k in ("name", "n_frames", "config_types", "source", "created_at")}
    if as_json:
        print_json(row)
    else:
        typer.echo(f"benchmark {name}: {doc['n_frames']} frames ({', '.join(doc['config_types'])})", err=True)


@benchmark_app.command("list")
def benchmark_list(store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Registered benchmark sets."""
    st = open_store_arg(store)
    rows = [{k: d[k] for k in ("name", "n_frames", "config_types", "source", "created_at")} for d in st.benchmarks()]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["name", "n_frames", "config_types", "source", "created_at"], "benchmark sets")


@app.command("export-model")
def export_model(model_id: str = typer.Argument(..., help="Model id."),
                 dest: Path = typer.Argument(..., help="Directory (new or empty)."),
                 store: Optional[str] = StoreOpt) -> None:
    """Model files for stand-alone MD (GAP: XML + sparseX; MACE: mace.model and a pair_style mace model),
    a LAMMPS snippet, an ASE example and the campaign's final state as a LAMMPS data file (units metal)."""
    st = open_store_arg(store)
    files = export(st, model_id, dest)
    typer.echo(f"wrote {', '.join(p.name for p in files)} to {dest}", err=True)
    if dest / LAMMPS_DATA in files:
        typer.echo(f"{LAMMPS_DATA}: final state of campaign {st.get_model(model_id).campaign} as a LAMMPS data "
                   "file (units metal, atom_style atomic, atom types in the order of lammps.in)", err=True)
    else:
        typer.echo(f"no {LAMMPS_DATA}: model {model_id} has no campaign state to export (a model of `otf fit`, "
                   "or a state with elements the model lacks)", err=True)
