"""Campaign configuration: the YAML schema (pydantic v2) and its loader.

Keys keep hybrid-md's names where hybrid-md has them (``can_update``, ``num_initial_steps``,
``check_interval``, ``adaptive_method_parameters``, ``tolerances``, ``refit``), so a file
written like Listing 1 of the paper loads once ``name``, ``structure``, ``md`` and
``reference`` are added.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from ase.data import atomic_numbers
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from otf_flows.defaults import MEASURED, apply_compat
from otf_flows.errors import ConfigError
from otf_flows.ml import registry as ml_registry
from otf_flows.ml.registry import GapModel, MaceModel, ModelSettings
from otf_flows.reference import registry as reference_registry
from otf_flows.reference.cp2k.settings import Cp2kReference
from otf_flows.reference.registry import ReferenceSettings
from otf_flows.reference.settings import AseReference
from otf_flows.reference.vasp.settings import VaspReference
from otf_flows.walkers import (
    WALKER_CONTEXT,
    WalkerGrid,
    Walkers,
    WalkerSpec,
    check_names,
    resolve_structure_files,
    walker_data,
)
from otf_flows.walkers import expand as expand_walkers
from otf_flows.yaml_config import INTERNAL_LOC, absolute_path, error_line, load_yaml
from otf_flows.yaml_config import Strict as _Strict

__all__ = ["AseReference", "CampaignConfig", "Cp2kReference", "GapModel", "MaceModel", "ModelSettings",
           "ReferenceSettings", "VaspReference", "config_from_dict", "json_schema", "load_config", "pair_numbers",
           "store_reference", "trains_on_virials_of"]

STORE_PREFIXES = ("campaign", "model")
"""Prefixes of ``refit.previous_data`` entries that name stored data instead of a file."""


def store_reference(item: str) -> tuple[str, str] | None:
    """``(kind, name)`` of a ``refit.previous_data`` entry naming stored data (``campaign:NAME``,
    ``model:ID``); None for a file.

    Examples
    --------
    >>> store_reference("campaign:cu-emt"), store_reference("data/train.xyz")
    (('campaign', 'cu-emt'), None)
    """
    kind, colon, name = item.partition(":")
    return (kind, name) if colon and kind in STORE_PREFIXES else None


class AdaptiveMethodParameters(_Strict):
    """Adaptive checking interval (hybrid-md's accuracy-adapted mode)."""

    n_min: int = Field(1, ge=1, description="Smallest interval between checks (MD steps).")
    n_max: int = Field(10000, ge=1, description="Largest interval between checks (MD steps).")
    factor: float = Field(2.0, description="Interval growth/shrink factor; must be > 1.")
    grow_below: float = Field(
        0.7, gt=0, le=1,
        description="A passed check grows the interval only when every checked error is below grow_below x its "
        "tolerance; a check that passes without that margin keeps the interval (fraction, 0 < x <= 1; 1.0 is "
        "hybrid-md, and compat: hybrid-md's default: every pass grows it). The interval then grows only while the "
        "model has room below the tolerance, so fewer frames between checks exceed it; it costs DFT calls while "
        "the errors sit in the margin (benchmarks/README.md, hidden error: with it the frames outside fell from "
        "7.9 % to 3.4 % on one Cu-Au seed, at 26 instead of 20 calls).",
    )
    shrink_above: float = Field(
        1.0, gt=0, le=1,
        description="A passed check whose error reaches shrink_above x its tolerance for any checked quantity "
        "(a near miss) shrinks the interval as a failed check does, but is not a failure: no rollback, no forced "
        "refit (fraction, grow_below <= x <= 1; 1.0: off, as hybrid-md). Checks then come sooner while the model "
        "sits just below the tolerance, where the frames between checks most often exceed it.",
    )

    @field_validator("factor")
    @classmethod
    def _factor_gt_one(cls, v: float) -> float:
        if not v > 1:
            raise ValueError("must be > 1")
        return v

    @model_validator(mode="after")
    def _bounds(self):
        if self.n_min > self.n_max:
            raise ValueError(f"n_min ({self.n_min}) must be <= n_max ({self.n_max})")
        if self.shrink_above < self.grow_below:
            raise ValueError(f"shrink_above ({self.shrink_above}) must be >= grow_below ({self.grow_below})")
        return self


class Tolerances(_Strict):
    """Check tolerances; ``null`` means not checked. A check passes iff every set value holds strictly."""

    ediff: float | None = Field(None, gt=0, description="|E_ML - E_DFT| / N tolerance (eV/atom).")
    fmax: float | None = Field(None, gt=0, description="Max force-component error tolerance (eV/Å).")
    frmse: float | None = Field(None, gt=0, description="Force-component RMSE tolerance (eV/Å).")
    vmax: float | None = Field(None, gt=0, description="Max virial-component error / N tolerance (eV/atom).")


class Refit(_Strict):
    """GAP refit settings (hybrid-md's ``refit`` block)."""

    previous_data: list[str] = Field(
        default_factory=list,
        description="extxyz files (relative to the YAML) or store references 'campaign:NAME' / "
        "'model:ID' whose frames are added to the training data.",
    )
    default_sigma: str = Field(
        "0.002 0.2 0.2 0.0",
        description="gap_fit default_sigma: energy (eV), force (eV/Å), virial (eV), hessian.",
    )
    descriptor_str: str | None = Field(
        None, description="gap_fit descriptor string; null takes the model preset's."
    )
    extra_gap_opts: str = Field(
        "sparse_jitter=1.0e-8", description="Extra gap_fit arguments, 'key=value' separated by spaces."
    )
    e0: str | float | dict[str, float] | None = Field(
        None, description="Isolated-atom energies (eV): one number, 'Si:-158.5', or a mapping."
    )
    e0_method: Literal["average", "isolated"] = Field(
        "average", description="gap_fit e0_method, used when e0 is not given."
    )
    train_on: Literal["all", "failed"] = Field(
        "all",
        description="Which DFT labels of the campaign a refit trains on: 'all' (initial MD frames, every check, "
        "passed or failed, and previous_data, as hybrid-md) or 'failed' (initial frames, failed checks and "
        "previous_data only).",
    )
    every_new_labels: int | None = Field(
        1, ge=1, description="Also refit after a passed check once this many DFT labels have joined the "
        "training data since the current model was fitted (1, the default: a refit after every check; null: "
        "refit on failed checks only, as hybrid-md and compat: hybrid-md). " + MEASURED["every_new_labels"] +
        " It costs a fit per check (seconds for GAP on a few hundred frames; raise it when fits dominate).",
    )
    virials: Literal["auto", "train", "ignore"] = Field(
        "auto",
        description="Whether refits train on the reference virials: 'train', 'ignore', or 'auto' = only when the "
        "campaign uses them (md.ensemble npt_berendsen or a tolerances.vmax). Under NVT a virial term at the "
        "force sigma costs force and energy accuracy (benchmarks/README.md, hidden error).",
    )
    energy_key: str = Field("REF_energy", description="extxyz key of reference energies in previous_data.")
    forces_key: str = Field("REF_forces", description="extxyz key of reference forces in previous_data.")
    virial_key: str = Field("REF_virial", description="extxyz key of reference virials in previous_data.")

    @field_validator("default_sigma", mode="before")
    @classmethod
    def _sigma(cls, v: Any) -> str:
        if isinstance(v, (list, tuple)):
            v = " ".join(str(x) for x in v)
        parts = str(v).split()
        try:
            values = [float(x) for x in parts]
        except ValueError:
            raise ValueError("must be 4 numbers 'energy force virial hessian'") from None
        if len(values) != 4 or any(x < 0 for x in values):
            raise ValueError("must be 4 non-negative numbers 'energy force virial hessian'")
        return " ".join(parts)

    @model_validator(mode="after")
    def _e0_xor_method(self):
        if self.e0 is not None and "e0_method" in self.model_fields_set:
            raise ValueError("give either e0 or e0_method, not both")
        return self

    @model_serializer(mode="wrap")
    def _without_unused_e0_method(self, handler):
        # with e0 given, e0_method is unused: a dump without it validates again (stored config, --resume)
        data = handler(self)
        if self.e0 is not None:
            data.pop("e0_method", None)
        return data


class StructureFile(_Strict):
    """Starting structure read from a file by ASE."""

    file: str = Field(description="Path of a structure file ASE can read (relative to the YAML).")
    index: int = Field(-1, description="Frame of a multi-frame file.")
    format: str | None = Field(None, description="ASE format name; guessed from the suffix when null.")
    repeat: tuple[int, int, int] = Field((1, 1, 1), description="Supercell repetition.")


class StructureBuilder(_Strict):
    """Starting structure built with ``ase.build.bulk``."""

    builder: Literal["bulk"] = Field(description="Builder name; 'bulk' calls ase.build.bulk.")
    element: str = Field(description="Chemical symbol or formula, e.g. 'Cu' or 'Si'.")
    crystalstructure: str | None = Field(None, description="e.g. fcc, bcc, diamond.")
    a: float | None = Field(None, gt=0, description="Lattice constant (Å).")
    cubic: bool = Field(True, description="Use the cubic cell.")
    repeat: tuple[int, int, int] = Field((1, 1, 1), description="Supercell repetition.")
    rattle_A: float = Field(0.0, ge=0, description="Gaussian rattle of positions (Å).")
    seed: int = Field(0, description="Seed of the rattle.")

    @field_validator("repeat")
    @classmethod
    def _repeat(cls, v):
        if any(n < 1 for n in v):
            raise ValueError("every entry must be >= 1")
        return v


class StructureAtoms(_Strict):
    """Starting structure given as atoms: what ``OtfMDMaker.make(structure)`` stores for a pymatgen
    ``Structure`` or ASE ``Atoms`` (species, positions and cell only; velocities come from ``md``)."""

    numbers: list[Annotated[int, Field(ge=1, le=118)]] = Field(min_length=1, description="Atomic numbers.")
    positions: list[tuple[float, float, float]] = Field(description="Cartesian positions (Å), one row per atom.")
    cell: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]] = Field(
        description="Cell vectors as rows (Å)."
    )
    pbc: tuple[bool, bool, bool] = Field((True, True, True), description="Periodic along a, b, c.")
    source: str | None = Field(None, description="Where the structure came from (for the record), e.g. 'Structure'.")

    @model_validator(mode="after")
    def _one_position_per_atom(self):
        if len(self.positions) != len(self.numbers):
            raise ValueError(f"{len(self.positions)} positions for {len(self.numbers)} atoms")
        return self


def trains_on_virials_of(refit: Refit, md: MDSettings, tolerances: Tolerances,
                         walkers: Walkers | None = None) -> bool:
    """Whether refits train on reference virials: ``refit.virials``, or with ``auto`` when the campaign's MD, or
    any walker's (one lineage), runs at constant pressure or its tolerances test the virial."""
    if refit.virials != "auto":
        return refit.virials == "train"
    if md.ensemble == "npt_berendsen" or tolerances.vmax is not None:
        return True
    return any(spec.md.get("ensemble") == "npt_berendsen" or spec.tolerances.get("vmax") is not None
               for spec in expand_walkers(walkers))


def pair_numbers(key: str) -> tuple[int, int]:
    """Atomic numbers (sorted) of a pair key such as ``'O-H'``; ValueError with a one-line reason."""
    parts = key.split("-")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"key {key!r} is not a pair 'A-B' of chemical symbols such as 'O-H'")
    numbers = []
    for symbol in (p.strip() for p in parts):
        z = atomic_numbers.get(symbol)
        if not z:  # 'X' (0) is ASE's dummy atom, not an element
            raise ValueError(f"key {key!r}: {symbol!r} is not a chemical symbol")
        numbers.append(z)
    return tuple(sorted(numbers))


class GuardSettings(_Strict):
    """Blow-up guard of ML-MD segments; a tripped guard stops the segment, the stopped frame is
    DFT-checked and trained on, and the campaign rolls back to the segment's start. When the
    reference agrees with the model there (within the tolerances) the state is hot, not the model
    bad: no refit, a rollback to the last state a passed check verified, and a resumable stop
    naming the limit to loosen when the same limit trips again from there.

    The smallest allowed distance of a pair of elements A-B is, first found wins:
    ``min_distance_pairs["A-B"]``, ``min_distance_A``, ``min_distance_factor`` × (r_A + r_B)
    with the covalent radii r of ``ase.data.covalent_radii``.
    """

    enabled: bool = Field(True, description="Check every ML-MD step.")
    min_distance_factor: float = Field(
        0.6, ge=0, lt=1,
        description="Trip when atoms of elements A, B are closer than this fraction of r_A + r_B (covalent radii, "
        "ase.data.covalent_radii). 0.6 is ~50-60 % of real bond lengths, below any thermal compression yet above "
        "fused atoms: H-H 0.37 Å (bond 0.74), O-H 0.58 Å (0.96), C-C 0.91 Å (1.54), Si-Si 1.33 Å (2.35), "
        "Cu-Cu 1.58 Å (2.55). 0 disables the pairs not set otherwise.",
    )
    min_distance_pairs: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Smallest allowed distance (Å) per pair of elements, e.g. {'H-H': 0.5, 'O-H': 0.6} (the order "
        "of the two symbols does not matter); overrides min_distance_A and min_distance_factor; 0 disables the pair.",
    )
    min_distance_A: float | None = Field(
        None, ge=0,
        description="Smallest allowed distance (Å) of every pair not in min_distance_pairs, instead of "
        "min_distance_factor; 0 disables them; null uses min_distance_factor.",
    )
    max_force_eV_A: float = Field(25.0, gt=0, description="Largest allowed force component (eV/Å).")
    max_label_force_eV_A: float = Field(
        500.0, gt=0, description="Reference labels with a larger force component (eV/Å), or with non-finite "
        "numbers, are unphysical: the frame is stored and flagged, never trained on.",
    )
    max_temperature_factor: float = Field(
        3.0, gt=1, description="Trip when T > factor × temperature_K + 500 K."
    )
    max_energy_jump_eV_per_atom: float = Field(0.5, gt=0, description="Largest energy change per step (eV/atom).")
    max_consecutive_trips: int = Field(
        8, ge=2,
        description="Stop the campaign (resumable) when this many of the last trip_window checks (guard trips and "
        "ordinary checks, the new one included) were guard trips: passed checks in between do not reset the count.",
    )
    trip_window: int | None = Field(
        None, ge=2,
        description="Number of most recent checks in which max_consecutive_trips guard trips stop the campaign; "
        "null: 2 × max_consecutive_trips. (A trip whose re-run would repeat it, with the same model from the same "
        "state, stops the campaign at once.)",
    )

    @field_validator("min_distance_pairs")
    @classmethod
    def _pairs(cls, v: dict[str, float]) -> dict[str, float]:

        seen: dict[tuple[int, int], str] = {}
        for key in v:
            pair = pair_numbers(key)
            if pair in seen:
                raise ValueError(f"{seen[pair]!r} and {key!r} name the same pair; give it once")
            seen[pair] = key
        return v

    @model_validator(mode="after")
    def _window(self):
        if self.trip_window is not None and self.trip_window < self.max_consecutive_trips:
            raise ValueError(
                f"trip_window ({self.trip_window}) must be >= max_consecutive_trips ({self.max_consecutive_trips})"
            )
        return self


class MDSettings(_Strict):
    """Molecular dynamics settings (ASE integrators)."""

    ensemble: Literal["nve", "nvt_langevin", "npt_berendsen"] = Field(
        "nvt_langevin", description="nve: velocity Verlet; nvt_langevin: ASE Langevin; npt_berendsen: ASE NPTBerendsen."
    )
    temperature_K: float = Field(300.0, ge=0, description="Thermostat (and initial velocity) temperature (K).")
    init_temperature_K: float | None = Field(
        None, ge=0, description="Maxwell-Boltzmann temperature of the initial velocities (K); default temperature_K."
    )
    timestep_fs: float = Field(
        1.0, gt=0, le=20,
        description="Time step (fs), 0 < dt <= 20. Velocity Verlet needs >~10 steps per period of the fastest "
        "vibration: 9 fs for O-H stretches (dt 0.5-1 fs with hydrogen), ~65 fs for Si and ~140 fs for Cu optical "
        "phonons (dt 1-5 fs). 20 fs exceeds any step used for atomistic MD, even of heavy soft solids, so a larger "
        "value is taken as a unit mistake (ps, ASE time units).",
    )
    total_steps: int = Field(1000, ge=1, description="Total MD steps of the campaign.")
    friction_per_fs: float = Field(0.01, gt=0, description="Langevin friction (1/fs).")
    pressure_GPa: float = Field(0.0, description="NPT target pressure (GPa).")
    taut_fs: float = Field(100.0, gt=0, description="NPT Berendsen thermostat time constant (fs).")
    taup_fs: float = Field(1000.0, gt=0, description="NPT Berendsen barostat time constant (fs).")
    compressibility_per_GPa: float = Field(0.01, gt=0, description="NPT Berendsen compressibility (1/GPa).")
    seed: int = Field(42, description="Seed of initial velocities and of the Langevin noise.")
    trajectory_interval: int = Field(10, ge=0, description="Write a trajectory frame every this many steps (0: none).")
    guard: GuardSettings = Field(default_factory=GuardSettings, description="Blow-up guard of ML-MD segments.")


GAP_ONLY_REFIT_KEYS = ("default_sigma", "descriptor_str", "extra_gap_opts", "e0", "e0_method")
"""Keys of the ``refit`` block only the GAP backend reads."""


class UncertaintySettings(_Strict):
    """Uncertainty trigger: the model's predicted error ends an ML-MD segment early and the DFT check
    runs on that frame. For GAP the measure is the largest predicted standard deviation of a local
    (atomic) energy, sqrt(max_i local_gap_variance_i) (eV)."""

    enabled: bool | None = Field(
        None, description="Evaluate the model's uncertainty during ML-MD segments. null (the default): on when the "
        "model has one (GAP; MACE with model.committee >= 2), off otherwise and under compat: hybrid-md. "
        + MEASURED["uncertainty"] + " It costs ~6 % of the ML-MD time (every: 2).",
    )
    every: int = Field(2, ge=1, description="Evaluate it every this many MD steps (the cost is ~1 extra model call; "
                       "~10 ms per step for GAP on 32 atoms at every: 2).")
    threshold: float | None = Field(
        None, gt=0, description="End the segment when the uncertainty exceeds this value (eV)."
    )
    calibrate_factor: float | None = Field(
        1.2, gt=1, description="End the segment when the uncertainty exceeds this factor times the largest "
        "uncertainty seen at the frames of passed checks of the current model (before any pass: no trigger). "
        "The default 1.2 is the measured one (benchmarks/README.md, hidden error); a threshold given instead "
        "replaces it.",
    )
    min_steps: int = Field(1, ge=1, description="Never end a segment earlier than this many steps.")
    check: Literal["most_uncertain", "end"] = Field(
        "most_uncertain",
        description="Which frame of a segment the DFT check labels: 'most_uncertain' = the evaluated frame with the "
        "largest uncertainty (the last one on a tie), so the check tests the model where it is least sure and that "
        "frame becomes the training label (no extra DFT call; one model call per segment when the frame is not the "
        "last); 'end' = the segment's last frame, as hybrid-md. On the melting Cu-Au benchmark most_uncertain cut "
        "the frames outside the tolerances from 1.17 % to 0.42 % at 1.07x the DFT calls (benchmarks/README.md, hidden "
        "error).",
    )
    measure: Literal["max_local", "mean_local", "total"] = Field(
        "max_local",
        description="How the local-energy variances var_i of a frame make its uncertainty (eV): 'max_local' = "
        "sqrt(max_i var_i), 'mean_local' = mean_i sqrt(var_i), 'total' = sqrt(sum_i var_i). benchmarks/README.md "
        "(hidden error) compares how well each separates the frames outside the tolerances.",
    )

    @model_validator(mode="after")
    def _one_threshold(self):
        if self.threshold is not None and "calibrate_factor" not in self.model_fields_set:
            self.calibrate_factor = None  # the default factor gives way to an absolute threshold
            self.model_fields_set.discard("calibrate_factor")
        if self.enabled and (self.threshold is None) == (self.calibrate_factor is None):
            raise ValueError("with enabled: true give exactly one of threshold (eV) or calibrate_factor")
        return self


class PromotionGate(_Strict):
    """Flag (and optionally reject) a refitted model that validates worse than its parent."""

    metric: Literal["force_rmse", "force_mae", "energy_rmse_per_atom", "energy_mae_per_atom"] = Field(
        "force_rmse", description="Validation metric compared with the parent's."
    )
    max_ratio: float = Field(1.25, gt=1, description="Flag when metric(new) > max_ratio × metric(parent).")
    keep_parent: bool = Field(False, description="Go on with the parent model when the new one is flagged.")


PHYSICAL_PROPERTIES = ("eos", "phonons", "elastic")
"""Properties of ``validation.physical``."""


class PhysicalBenchmark(_Strict):
    """One physical benchmark of the campaign's final model against its DFT reference (``validation.physical``)."""

    property: Literal["eos", "phonons", "elastic"] = Field(
        description="eos (energy-volume curve, Birch-Murnaghan bulk modulus), phonons (phonopy band structure "
        "and DOS) or elastic (clamped-ion elastic tensor).")
    structure: str = Field(description="Structure file (cif, POSCAR, extxyz, ...; relative to the YAML), e.g. a "
                           "primitive diamond Si cell.")
    label: str | None = Field(None, description="Name of the benchmark in the store (default: the file's stem).")
    dft: bool = Field(True, description="Also compute the property with the campaign's reference (DFT).")
    kpoints: tuple[int, int, int] | None = Field(
        None, description="k-point grid of the DFT single points; null: the reference's k-point density carried "
        "over to the benchmark cell (finest spacing of reference.kpoints on the campaign's starting cell).")
    supercell: tuple[int, int, int] = Field((2, 2, 2), description="phonons: supercell of the structure (diagonal).")
    displacement_A: float = Field(0.01, gt=0, le=0.1, description="phonons: phonopy displacement (Å).")
    linear_strain: tuple[float, float] = Field((-0.03, 0.03), description="eos: range of the linear strain of "
                                               "the cell (fractions; ±0.03 is ±9 % in volume).")
    n_points: int = Field(7, ge=5, le=15, description="eos: strained cells (energies per curve).")

    @field_validator("linear_strain")
    @classmethod
    def _strain(cls, v):
        if not -0.2 <= v[0] < v[1] <= 0.2:
            raise ValueError("must be two fractions low < high within -0.2..0.2")
        return v


class ValidationSettings(_Strict):
    """Validation of new models (seed 001's recommendations) on benchmark sets and untrained check frames."""

    benchmarks: list[str] = Field(
        default_factory=list, description="Benchmark sets registered with `otf benchmark add`."
    )
    checks: bool = Field(True, description="Also validate on the campaign's check frames the model was not trained on.")
    every: Literal["refit", "end"] | int = Field(
        "refit", description="When: after every refit, every k-th refit (an integer), or at the end only."
    )
    promotion: PromotionGate | None = Field(None, description="Optional promotion gate against the parent model.")
    physical: list[PhysicalBenchmark] = Field(
        default_factory=list, description="Physical benchmarks of the final model against the reference (EOS, "
        "phonons, elastic tensor; atomate2 flows run after the final validation, seed 001 Sec. V B).")

    @field_validator("every")
    @classmethod
    def _every(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'refit', 'end' or an integer >= 1")
        return v


class JobResources(_Strict):
    """Where and how one kind of job runs on a cluster (FireWorks routing)."""

    category: str | None = Field(None, description="FireWorks category (default: the job kind: dft, md, fit, light).")
    fworker: str | None = Field(None, description="FireWorks worker name (_fworker) the job must run on.")
    omp_threads: int | None = Field(
        None, ge=1, description="Threads of the job's programs: OMP_NUM_THREADS of CP2K (dft, before "
        "reference.omp_threads), quip's OpenMP/BLAS threads in ML-MD (md) and gap_fit's (fit), before "
        "model.num_threads; may change on --resume.",
    )
    queue: dict[str, Any] = Field(
        default_factory=dict,
        description="Queue-adapter overrides for this kind (_queueadapter), e.g. {nodes: 4, walltime: '04:00:00'}.",
    )


class LightResources(JobResources):
    """Where light jobs (compare + decide, validate, finish) run on a cluster."""

    inline: bool = Field(
        False, description="FireWorks mode: run each light job in the firework of the job before it (decide after "
        "the DFT check, on the dft worker; validate after a refit, on the fit worker), so no light worker or queue "
        "job is needed; a light job with no job before it takes the routing of the job that emitted it.",
    )


class LocalSettings(_Strict):
    """How `otf run` (and an allocation, which runs `otf run --resume`) runs the jobs on its machine."""

    workers: int = Field(
        1, ge=1, le=256, description="Walkers' chains run at once, each in a worker process (a campaign with "
        "walkers; 1: one job at a time, the walkers taking turns). Inside a batch allocation each concurrent DFT "
        "job gets ntasks / workers MPI tasks ({ntasks} of the run command, docs/tutorials/walkers.md); may change on --resume.",
    )


class ExecutionSettings(_Strict):
    """Resources per job kind: DFT (initial MD, checks), ML-MD segments, fits, light bookkeeping."""

    dft: JobResources = Field(default_factory=JobResources, description="Reference calculations.")
    md: JobResources = Field(default_factory=JobResources, description="ML-MD segments.")
    fit: JobResources = Field(default_factory=JobResources, description="gap_fit.")
    light: LightResources = Field(default_factory=LightResources, description="Compare + decide, bookkeeping.")
    local: LocalSettings = Field(default_factory=LocalSettings, description="Jobs at once in `otf run` (walkers).")
    cache_dir: str | None = Field(
        None, description="Cache directory on the nodes that run jobs (extracted models of a MongoDB store, "
        "pymatgen's CP2K data); before $OTF_CACHE_DIR, after --cache-dir. Default: <temporary directory>/"
        "otf_flows-cache-<uid> on each node; never under $HOME.",
    )
    scratch_dir: str | None = Field(
        None, description="Root of the job directories of `otf run` (DFT and gap_fit files), one sub-directory per "
        "campaign; before $OTF_SCRATCH_DIR, after --scratch-dir. Default: <store>/runs for a store directory, "
        "else ./otf-runs. FireWorks jobs run in their launch directory (rlaunch's, see launchers/pilot.sh).",
    )


class CampaignConfig(_Strict):
    """One on-the-fly campaign."""

    def as_dict(self) -> dict:
        """The settings in monty's MSON form with every key at the value it resolved to (the blocks' as_dict
        keep only the keys given): a job queued in a LaunchPad keeps the settings its campaign was built
        with when a newer otf_flows changes a default."""
        return {"@module": type(self).__module__, "@class": type(self).__name__, **self.model_dump(mode="json")}

    @property
    def trains_on_virials(self) -> bool:
        """Whether refits train on reference virials (``refit.virials``; :func:`trains_on_virials_of`)."""
        return trains_on_virials_of(self.refit, self.md, self.tolerances, self.walkers)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description="Campaign name (letters, digits, . _ -).")
    compat: Literal["hybrid-md"] | None = Field(
        None, description="'hybrid-md': hybrid-md's behaviour where the YAML says nothing else (refits on failed "
        "checks only, no rollback, every passed check grows the interval, no uncertainty trigger); null: the "
        "measured-best defaults of otf_flows (benchmarks/README.md, hidden error). Stored with the campaign: a "
        "campaign resumes with the settings it started with.",
    )
    structure: Annotated[
        Union[StructureFile, StructureBuilder, StructureAtoms], Field(union_mode="left_to_right")
    ] = Field(
        description="Starting structure: {file: ...}, {builder: bulk, ...} or {numbers: ..., positions: ..., cell: ...}."
    )
    md: MDSettings = Field(default_factory=MDSettings, description="MD settings.")
    reference: ReferenceSettings = Field(description="Reference engine: {engine: ase|cp2k|vasp, ...}.")
    model: ModelSettings = Field(default_factory=GapModel, description="ML model: {backend: gap|mace, ...}.")
    can_update: bool = Field(False, description="Refit the model when a check fails (hybrid-md default false).")
    rollback_on_fail: bool = Field(
        True, description="After a failed check and refit, re-run the segment from the previous check's frame "
        "with the refitted model (false: go on from the failed frame, as hybrid-md and compat: hybrid-md). "
        + MEASURED["rollback_on_fail"] + " It costs the ML-MD steps of the discarded segment, and keeps a "
        "state that a bad model produced out of the trajectory. A segment is re-run at most 3 times; a fourth failed "
        "check from the same state goes on from its frame, as hybrid-md does (tolerances the model cannot reach "
        "there do not cost DFT calls for ever).",
    )
    num_initial_steps: int = Field(0, ge=0, description="Reference-driven MD steps before the first fit.")
    check_interval: int = Field(1, ge=1, description="First (adaptive) or fixed interval between checks (MD steps).")
    adaptive_method_parameters: AdaptiveMethodParameters | None = Field(
        None, description="Adaptive interval; absent means a fixed interval."
    )
    tolerances: Tolerances = Field(default_factory=Tolerances, description="Check tolerances.")
    refit: Refit = Field(default_factory=Refit, description="GAP refit settings.")
    uncertainty: UncertaintySettings = Field(
        default_factory=UncertaintySettings, description="Uncertainty trigger of early DFT checks."
    )
    store: str | None = Field(None, description="Store directory or mongodb:// URI (overridden by --store / OTF_STORE).")
    validation: ValidationSettings = Field(default_factory=ValidationSettings, description="Validation of models.")
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings, description="Cluster resources per job kind.")
    walkers: list[WalkerSpec] | WalkerGrid | None = Field(
        None, description="Several trajectories sharing the campaign's training set and model lineage (docs/"
        "walkers.md): a list of {name, structure, md, tolerances} changing the campaign's blocks, or {grid: "
        "{md.temperature_K: [...], ...}} for the cartesian product; null: one trajectory, the campaign's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _compat(cls, data: Any):
        return apply_compat(data)

    @field_validator("walkers")
    @classmethod
    def _walkers(cls, v):
        if isinstance(v, list):
            check_names(v)
        elif isinstance(v, WalkerGrid):
            expand_walkers(v)  # generated names are unique
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any):
        if not isinstance(v, dict):
            return v
        if v.get("backend", "gap") not in ml_registry.BACKENDS:
            raise ValueError(f"backend {v.get('backend')!r} is not one of {ml_registry.names()}")
        return {"backend": "gap", **v}

    @field_validator("reference", mode="before")
    @classmethod
    def _reference(cls, v: Any):
        if not isinstance(v, dict):
            raise ValueError(f"must be a mapping with an 'engine' key ({reference_registry.names()})")
        if v.get("engine", "ase") not in reference_registry.ENGINES:
            raise ValueError(f"engine {v.get('engine')!r} is not one of {reference_registry.names()}")
        return {"engine": "ase", **v}

    @model_validator(mode="after")
    def _cross(self, info: ValidationInfo):
        if self.adaptive_method_parameters is not None:
            p = self.adaptive_method_parameters
            if not p.n_min <= self.check_interval <= p.n_max:
                raise ValueError(
                    f"check_interval ({self.check_interval}) must lie within n_min..n_max ({p.n_min}..{p.n_max})"
                )
        one_walker = bool((info.context or {}).get("walker"))  # the campaign's data is checked on the campaign
        initial = [self.num_initial_steps] if self.walkers is None else [
            self.num_initial_steps if w.num_initial_steps is None else w.num_initial_steps
            for w in expand_walkers(self.walkers)]
        if not one_walker and max(initial) == 0 and not self.refit.previous_data and self.model.initial_model is None:
            raise ValueError(
                "num_initial_steps is 0 (for every walker) and there is no refit.previous_data or "
                "model.initial_model: no data to fit"
            )
        if self.model.backend != "gap":
            for key in GAP_ONLY_REFIT_KEYS:  # given, and not its default (the stored settings hold every key)
                default = Refit.model_fields[key].get_default(call_default_factory=True)
                if key in self.refit.model_fields_set and getattr(self.refit, key) != default:
                    raise ValueError(f"refit.{key} is a GAP setting; model.backend {self.model.backend} does not use it")
            if self.uncertainty.enabled and getattr(self.model, "committee", 1) < 2:
                raise ValueError(f"uncertainty.enabled: model.backend {self.model.backend} has no uncertainty "
                                 "with model.committee 1 (set model.committee: 2-4)")
        if self.uncertainty.enabled is None:  # on when the model has an uncertainty (not a key the YAML gave)
            has = self.model.backend == "gap" or getattr(self.model, "committee", 1) >= 2
            self.uncertainty.enabled = has and self.compat is None
            self.uncertainty.model_fields_set.discard("enabled")
        if self.num_initial_steps >= self.md.total_steps:
            raise ValueError(
                f"num_initial_steps ({self.num_initial_steps}) must be < md.total_steps ({self.md.total_steps})"
            )
        return self


def _format_error(err: ValidationError, data: Any) -> str:
    """One line: where, the value, and what is allowed."""
    e = err.errors()[0]
    if e["loc"][:1] == ("walkers",):
        return _walkers_error(err, data)
    tags = {"reference": reference_registry.ENGINES, "model": ml_registry.BACKENDS}  # the tagged unions' tags
    loc = [str(x) for x in e["loc"] if not str(x).startswith(INTERNAL_LOC)]
    if loc[1:2] and loc[1] in tags.get(loc[0], ()):
        del loc[1]
    where = ".".join(loc) or "campaign"
    if e["type"] == "extra_forbidden":
        parent = _model_at(CampaignConfig, loc[:-1], data)
        allowed = ", ".join(parent.model_fields) if parent is not None else "see `otf schema`"
        return f"{where}: unknown key; allowed keys here: {allowed}"
    if e["type"] == "missing":
        return f"{where}: required key is missing"
    return f"{where}: {error_line(err, skip=len(e['loc']), got=True)}"  # the message: the location is above


def _walkers_error(err: ValidationError, data: Any) -> str:
    """One line for an error in ``walkers``: the branch the value is meant for (a list or a grid), the walker's name."""
    given = data.get("walkers") if isinstance(data, dict) else None
    branch = "WalkerGrid" if isinstance(given, dict) else "list[WalkerSpec]" if isinstance(given, list) else None
    errors = [e for e in err.errors() if e["loc"][:1] == ("walkers",)]
    if branch is None:
        return (f"walkers: must be a list of walkers {{name, structure, md, tolerances}} or {{grid: {{md.<key>: "
                f"[values]}}}} (got {given!r})")
    e = next((e for e in errors if len(e["loc"]) > 1 and e["loc"][1] == branch), errors[0])
    loc = [str(x) for x in e["loc"][2:]]
    who = ""
    if branch == "list[WalkerSpec]" and loc and loc[0].isdigit():
        item = given[int(loc[0])] if int(loc[0]) < len(given) else None
        name = item.get("name") if isinstance(item, dict) else None
        who = f" walker {name!r}:" if isinstance(name, str) else f" walker number {int(loc[0]) + 1}:"
        loc = loc[1:]
    where = ".".join(loc)
    model = WalkerGrid if branch == "WalkerGrid" else WalkerSpec
    if e["type"] == "extra_forbidden" and len(loc) == 1:
        return f"walkers:{who} {where}: unknown key; allowed keys here: {', '.join(model.model_fields)}"
    if e["type"] == "missing":
        return f"walkers:{who} {where}: required key is missing"
    msg = e["msg"].removeprefix("Value error, ")
    got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], (dict, list)) else ""
    return f"walkers:{who} {where + ': ' if where else ''}{msg}{got}"


def _model_at(model, loc: list[str], data: Any):
    for key in loc:
        field = model.model_fields.get(key)
        if field is None:
            return None
        ann = field.annotation
        if key == "model":
            backend = (data.get("model") or {}).get("backend", "gap") if isinstance(data, dict) else "gap"
            return getattr(ml_registry.BACKENDS.get(backend), "settings", None)
        if key == "reference":
            engine = (data.get("reference") or {}).get("engine", "ase") if isinstance(data, dict) else "ase"
            return getattr(reference_registry.ENGINES.get(engine), "settings", None)
        if key == "structure":
            sd = data.get("structure") if isinstance(data, dict) else None
            if isinstance(sd, dict) and "numbers" in sd:
                return StructureAtoms
            return StructureBuilder if isinstance(sd, dict) and "builder" in sd else StructureFile
        args = getattr(ann, "__args__", None)
        candidates = [a for a in (args or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
        data = data.get(key) if isinstance(data, dict) else None
    return model


def config_from_dict(data: Any, base_dir: str | Path = ".") -> CampaignConfig:
    """Validate a campaign mapping; relative paths are resolved against ``base_dir``.

    Raises
    ------
    ConfigError
        With a one-line message naming the key, the value and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"campaign: the YAML must be a mapping of keys, got {type(data).__name__}")
    if isinstance(data.get("structure"), str):
        data = {**data, "structure": {"file": data["structure"]}}
    try:
        config = CampaignConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, data)) from None
    base = Path(base_dir).resolve()
    if isinstance(config.structure, StructureFile):
        path = Path(absolute_path(config.structure.file, base))
        if path.is_dir():
            raise ConfigError(f"structure.file: {config.structure.file!r} is a directory, not a structure file "
                              f"(looked in {base})")
        if not path.is_file():
            raise ConfigError(f"structure.file: {config.structure.file!r} does not exist (looked in {base})")
        config.structure.file = str(path)
    foundation = getattr(config.model, "foundation_model", None)
    if foundation is not None:
        path = Path(absolute_path(foundation, base))
        if not path.is_file():
            raise ConfigError(f"model.foundation_model: {foundation!r} is not a file (looked in {base}); give the "
                              "local path of a MACE model file, nothing is downloaded")
        config.model.foundation_model = str(path)
    resolved = []
    for item in config.refit.previous_data:
        if store_reference(item):
            resolved.append(item)
            continue
        path = Path(absolute_path(item, base))
        if path.is_dir():
            raise ConfigError(f"refit.previous_data: {item!r} is a directory, not an extxyz file (looked in {base})")
        if not path.is_file():
            raise ConfigError(f"refit.previous_data: {item!r} does not exist (looked in {base})")
        resolved.append(str(path))
    config.refit.previous_data = resolved
    for k, bench in enumerate(config.validation.physical):
        path = Path(absolute_path(bench.structure, base))
        if not path.is_file():
            raise ConfigError(f"validation.physical.{k}.structure: {bench.structure!r} does not exist "
                              f"(looked in {base})")
        bench.structure = str(path)
    errors = resolve_structure_files(config, base)
    if errors:
        raise ConfigError(errors[0])
    for spec in expand_walkers(config.walkers):  # each walker's settings, with the same models
        walker = walker_data(config, spec)
        try:
            CampaignConfig.model_validate(walker, context=WALKER_CONTEXT)
        except ValidationError as err:
            raise ConfigError(f"walkers: walker {spec.name!r}: {_format_error(err, walker)}") from None
    for key in ("cache_dir", "scratch_dir"):  # the same directory on every node: never relative to a job's cwd
        value = getattr(config.execution, key)
        if value is not None:
            setattr(config.execution, key, absolute_path(value, base))
    return config


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: {str(path)!r} does not exist")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config: {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return config_from_dict(data, base_dir=path.parent)


def json_schema() -> str:
    """The campaign YAML schema as JSON Schema."""
    return json.dumps(CampaignConfig.model_json_schema(), indent=2)
