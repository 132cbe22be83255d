"""Documents kept in the store (DESIGN §5). Units: eV, Å, eV/Å, fs, K, s."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


def now() -> datetime:
    """Current time in UTC."""
    return datetime.now(timezone.utc)


class _Doc(BaseModel):
    schema_version: int = Field(SCHEMA_VERSION, description="Version of this document's schema.")


class Provenance(BaseModel):
    """Where a frame's labels come from: the essentials of the reference calculation's task document."""

    code: str = Field(description="What computed the labels: 'cp2k', 'vasp', 'ase' (an ASE calculator), or "
                      "'file' for frames imported from a file.")
    code_version: str | None = Field(None, description="Version of the program (CP2K's or VASP's; ASE's for an "
                                     "ASE calculator).")
    calculator: str | None = Field(None, description="ASE calculator class (import path), for code 'ase'.")
    level_of_theory: str = Field(description="Short label of the physics, e.g. 'cp2k PBE DZVP-MOLOPT-SR-GTH "
                                 "GTH-PBE 300 Ry'; training on frames of different labels warns.")
    input_set: str | None = Field(None, description="atomate2 input-set generator that wrote the inputs.")
    input_settings: dict[str, Any] = Field(default_factory=dict, description="The exact settings given to the "
                                           "input set (atomate2 user_input_settings, k-points).")
    scf_steps: int | None = Field(None, description="SCF (electronic) steps of the final attempt (count).")
    scf_converged: bool | None = Field(None, description="Whether the SCF converged (labels are stored only if it did).")
    corrections: list[dict[str, Any]] = Field(default_factory=list, description="custodian corrections of the "
                                              "run, each {errors, actions}.")
    attempts: int | None = Field(None, description="Attempts the engine needed (1: the first succeeded).")
    run_dir: str | None = Field(None, description="Directory of the calculation that produced the labels.")
    wall_seconds: float | None = Field(None, description="Wall time of the labelling call, engine included (s).")
    code_seconds: float | None = Field(None, description="Time the program reports for itself (s; CP2K: its "
                                       "timing report's total).")
    source_file: str | None = Field(None, description="Imported frames: the file they were read from (absolute).")
    source_index: int | None = Field(None, description="Imported frames: index of the frame in that file.")


class FrameDoc(_Doc):
    """One reference-labelled structure (training, check or imported frame)."""

    frame_id: str = Field(description="Content hash of structure + labels + reference settings.")
    campaign: str | None = Field(None, description="Campaign that produced the frame (None for imports).")
    source: Literal["initial_md", "check", "import", "audit"] = Field(
        description="How the frame was made ('audit': a frame between checks labelled by `otf audit`, never "
        "trained on).")
    md_step: int | None = Field(None, description="MD step of the frame in its campaign.")
    walker: str | None = Field(None, description="Walker whose trajectory produced the frame (None: a campaign "
                               "without walkers).")
    config_type: str = Field("otf", description="Label used for per-type sigmas and metrics.")
    numbers: list[int] = Field(description="Atomic numbers.")
    positions: list[list[float]] = Field(description="Cartesian positions (Å).")
    cell: list[list[float]] = Field(description="Cell vectors (Å).")
    pbc: list[bool] = Field(description="Periodic boundary conditions.")
    energy: float = Field(description="Reference total energy (eV).")
    forces: list[list[float]] = Field(description="Reference forces (eV/Å).")
    virial: list[list[float]] | None = Field(None, description="Reference virial (eV); None if not periodic.")
    reference_hash: str = Field(description="Hash of the reference settings that produced the labels.")
    reference: dict[str, Any] = Field(default_factory=dict, description="Reference settings (engine, parameters).")
    training_in: list[str] = Field(default_factory=list, description="Campaigns whose training set holds this frame.")
    flags: list[str] = Field(
        default_factory=list,
        description="Why the labels are suspect, e.g. unphysical reference forces; a flagged frame is never trained on.",
    )
    provenance: Provenance | None = Field(None, description="Where the labels come from (None: stored before "
                                          "provenance was recorded).")
    structure: dict[str, Any] | None = Field(None, description="The frame as a pymatgen Structure (periodic) or "
                                             "Molecule dict (Structure.from_dict); Å.")
    created_at: datetime = Field(default_factory=now)

    @staticmethod
    def content_hash(numbers, positions, cell, pbc, energy, forces, reference_hash: str) -> str:
        """Hash of everything that makes a frame distinct."""
        h = hashlib.sha256()
        h.update(np.asarray(numbers, dtype=np.int64).tobytes())
        for arr in (positions, cell, forces):
            h.update(np.ascontiguousarray(np.asarray(arr, dtype=np.float64)).tobytes())
        h.update(np.asarray(pbc, dtype=bool).tobytes())
        h.update(np.float64(energy).tobytes())
        h.update(reference_hash.encode())
        return h.hexdigest()[:24]


class CheckDoc(_Doc):
    """One DFT check of the current model (DESIGN §6 fields)."""

    check_id: str = Field(description="Unique id: '<campaign>:check:<step>:<model_id>'.")
    kind: Literal["check", "guard"] = Field("check", description="A scheduled check, or the DFT check of a "
                                            "frame where the blow-up guard stopped a segment.")
    campaign: str
    walker: str | None = Field(None, description="Walker whose trajectory was checked (None: a campaign "
                               "without walkers).")
    step: int = Field(description="MD step at which the checked segment ended (its checked frame unless frame_step).")
    frame_step: int | None = Field(None, description="MD step of the checked frame when it is not the segment's "
                                   "last (uncertainty.check: most_uncertain).")
    interval: int = Field(description="MD steps since the previous check (or since the start).")
    ediff: float | None = Field(None, description="|E_ML - E_DFT| / N (eV/atom).")
    fmax: float | None = Field(None, description="Max force-component error (eV/Å).")
    frmse: float | None = Field(None, description="Force-component RMSE (eV/Å).")
    vmax: float | None = Field(None, description="Max virial-component error / N (eV/atom).")
    passed: bool = Field(description="Every set tolerance held strictly.")
    new_interval: int = Field(description="Interval to the next check (MD steps).")
    refit: bool = Field(description="The check triggered a refit.")
    model_id: str = Field(description="Model that was checked.")
    new_model_id: str | None = Field(None, description="Model fitted after this check (None if no refit).")
    frame_id: str = Field(description="The checked frame (reference labels).")
    guard_reason: str | None = Field(None, description="Why the guard stopped the segment (kind 'guard').")
    guard_limit: str | None = Field(None, description="The md.guard key whose limit tripped (kind 'guard'): "
                                    "max_temperature_factor, max_force_eV_A, max_energy_jump_eV_per_atom or "
                                    "min_distance (None: not a guard trip, or stored before it was recorded).")
    reference_agreed: bool | None = Field(
        None, description="Kind 'guard': the reference agreed with the model at the tripped frame within the "
        "tolerances (every set tolerance held): the trip is the state's (a hot state), not the model's (a bad "
        "model), so no refit followed it and the campaign rolled back to the last state a passed check "
        "verified. False: a bad model (refit, rollback to the segment's start). None: not a guard trip, no "
        "tolerance set, unphysical labels, or stored before it was recorded.")
    rolled_back_to: int | None = Field(None, description="MD step the campaign continued from after a rollback.")
    rolled_back_state_id: str | None = Field(None, description="State the campaign continued from after a rollback.")
    refit_error: str | None = Field(None, description="Why the refit failed (the previous model was kept).")
    reference_seconds: float = Field(0.0, description="Wall time of the reference calculation (s).")
    trigger: Literal["interval", "uncertainty", "guard"] = Field(
        "interval", description="What ended the segment: the schedule's interval, the uncertainty trigger or the guard."
    )
    uncertainty: float | None = Field(
        None, description="Model's predicted uncertainty at the checked frame (eV; GAP: largest local-energy std)."
    )
    uncertainty_threshold: float | None = Field(None, description="Threshold in force for the segment (eV).")
    trained_on: bool = Field(False, description="The frame joined the training data (after the errors were measured).")
    created_at: datetime = Field(default_factory=now)


class ModelDoc(_Doc):
    """One model version with its lineage."""

    model_id: str = Field(description="Unique id, '<campaign>-v<version>' for campaign models.")
    version: int = Field(description="1 for the first fit of a campaign, then +1 per refit.")
    campaign: str | None = Field(None, description="Campaign the model belongs to (None for `otf fit`).")
    backend: str = Field("gap", description="ML backend (model.backend: gap, mace).")
    parent_model_id: str | None = Field(None, description="Model this one replaced.")
    training_frame_ids: list[str] = Field(description="Frames it was trained on.")
    n_training_frames: int
    trigger_check_id: str | None = Field(None, description="Check that triggered the fit (None for the first).")
    trigger_check_step: int | None = Field(None, description="MD step of the triggering check.")
    trigger_walker: str | None = Field(None, description="Walker whose check triggered the fit (None: the first "
                                       "fit, or a campaign without walkers).")
    merged_check_ids: list[str] = Field(
        default_factory=list, description="Failed checks of other walkers that asked for a refit while this "
        "model was fitted or waited: their labels are in its training set, so no refit of their own was run.")
    fit_settings: dict[str, Any] = Field(
        default_factory=dict, description="Fit settings: the command line (gap_fit or mace run_train arguments) and "
        "the backend's settings; MACE also started_from (scratch, parent, foundation).")
    fit_log_summary: str = Field("", description="Tail of the fit's log (gap_fit, or MACE's error table).")
    fit_seconds: float = Field(description="Wall time of the fit (s).")
    artifact: str = Field(description="Blob key of the model archive (tar.gz of the model directory: GAP XML and "
                          "sparseX files, or mace.model and mace.json).")
    flags: list[str] = Field(default_factory=list, description="Warnings, e.g. a failed promotion gate.")
    warnings: list[str] = Field(default_factory=list, description="Warnings about the training data, e.g. "
                                "frames of different levels of theory (they do not fail the promotion gate).")
    created_at: datetime = Field(default_factory=now)


class StateDoc(_Doc):
    """Exact MD state at a step, to continue the trajectory from."""

    state_id: str = Field(description="'<campaign>:state:<step>:<model_id or initial>'.")
    start_state_id: str | None = Field(None, description="State the segment ending here started from.")
    campaign: str
    walker: str | None = Field(None, description="Walker whose trajectory the state belongs to (None: a campaign "
                               "without walkers).")
    step: int
    numbers: list[int]
    positions: list[list[float]] = Field(description="Å")
    velocities: list[list[float]] = Field(description="ASE velocity units (Å/(ASE time unit)).")
    cell: list[list[float]] = Field(description="Å")
    pbc: list[bool]
    masses: list[float] = Field(description="amu")
    rng_state: str | None = Field(None, description="JSON of the thermostat RNG state (Langevin).")
    model_id: str | None = Field(None, description="Model that drove the segment ending here.")
    ml_energy: float | None = Field(None, description="Model energy of this frame (eV).")
    ml_forces: list[list[float]] | None = Field(None, description="Model forces (eV/Å).")
    ml_virial: list[list[float]] | None = Field(None, description="Model virial (eV).")
    trajectory: str | None = Field(None, description="Blob key of the segment's extxyz trajectory.")
    stopped_early: str | None = Field(None, description="Reason the blow-up guard stopped the segment before its end.")
    guard_settings: dict[str, Any] | None = Field(
        None, description="The md.guard settings that stopped the segment (stopped_early): a re-run under other "
        "settings (loosened on --resume) runs the segment again instead of taking this one (None: not stopped, "
        "or stored before they were recorded).")
    uncertainty_stop: str | None = Field(
        None, description="Reason the uncertainty trigger ended the segment before its end."
    )
    ml_uncertainty: float | None = Field(None, description="Model uncertainty of this frame (eV), when evaluated.")
    uncertainty_threshold: float | None = Field(None, description="Uncertainty threshold of the segment (eV).")
    uncertainty_seconds: float = Field(0.0, description="Wall time spent evaluating the uncertainty (s).")
    n_uncertainty_evals: int = Field(0, description="Uncertainty evaluations in the segment.")
    check_frame: dict[str, Any] | None = Field(
        None, description="The frame the DFT check labels when it is not this one (uncertainty.check: "
        "most_uncertain): step, numbers, positions, cell, pbc and the model's energy, forces, virial, uncertainty.",
    )
    created_at: datetime = Field(default_factory=now)


class LedgerEntry(_Doc):
    """Wall time of one job, by kind."""

    campaign: str
    kind: Literal["reference", "fit", "ml_md", "other"]
    seconds: float
    job: str = Field(description="Job name.")
    step: int | None = None
    walker: str | None = Field(None, description="Walker whose trajectory the job belongs to (None: a campaign "
                               "without walkers).")
    started_at: datetime | None = Field(None, description="When the job's timed work started (UTC; None: "
                                        "recorded before start times were kept: created_at - seconds).")
    created_at: datetime = Field(default_factory=now, description="When the job's timed work ended (UTC).")


class CampaignDoc(_Doc):
    """A campaign, its configuration and its progress pointer."""

    name: str
    config: dict[str, Any] = Field(description="Validated campaign configuration (no credentials).")
    status: Literal["created", "running", "completed", "failed", "stopped"] = "created"
    step: int = Field(0, description="Last MD step reached by an accepted state.")
    state_id: str | None = Field(None, description="State the next segment starts from.")
    model_id: str | None = Field(None, description="Current model.")
    interval: int | None = Field(None, description="Next interval (MD steps).")
    pending_refit: str | None = Field(None, description="Check id whose refit has not finished.")
    total_steps: int
    wall_seconds: float = Field(0.0, description="Wall time of all `otf run` invocations (s).")
    message: str | None = Field(None, description="Last error or stop reason.")
    changes: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Settings changed on --resume, oldest first: {step: MD step the new values apply from, "
        "at: ISO time (UTC), changed: {dotted key: [old, new]}}.",
    )
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)


class AllocationDoc(_Doc):
    """One batch allocation of a campaign in allocation mode (``otf submit --batch``)."""

    allocation_id: str = Field(description="'<campaign>:alloc:<number>' (number zero-padded to 4 digits).")
    campaign: str
    number: int = Field(description="Allocation number within the campaign, from 1 (names its log file).")
    chain: int = Field(description="Chain number: each `otf submit --batch` starts a chain, from 1.")
    index: int = Field(description="Position of the allocation in its chain, from 1.")
    max_allocations: int = Field(description="Allocations the chain may have (1 + --resubmit).")
    scheduler: Literal["slurm", "pbs"]
    job_id: str = Field(description="Batch job id.")
    host: str = Field(description="Host the batch script ran on.")
    ntasks: int | None = Field(None, description="MPI tasks of the allocation ({ntasks} of the run command).")
    log: str = Field(description="Log file of `otf run` in this allocation.")
    step_start: int = Field(description="Campaign MD step when the allocation started.")
    started_at: datetime = Field(default_factory=now)
    ended_at: datetime | None = Field(None, description="When `otf run` ended (None: running, or killed "
                                      "before the script could record it).")
    exit_code: int | None = Field(None, description="Exit code of `otf run` (3: stopped resumably).")
    step_end: int | None = Field(None, description="Campaign MD step when the allocation ended.")
    reason: str | None = Field(None, description="Why it ended: completed, stopped (SIGTERM, --stop-after), "
                               "failed with the campaign's message, ...")
    resubmit: bool = Field(False, description="Whether the script was told to resubmit itself.")
    next_job_id: str | None = Field(None, description="Job id of the resubmitted allocation.")
