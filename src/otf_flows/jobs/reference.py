"""Reference jobs: the initial reference-driven MD and the DFT check of a segment's last frame."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from jobflow import Maker, job

from otf_flows import progress
from otf_flows.campaign import CampaignConfig
from otf_flows.data import import_previous_data
from otf_flows.dirs import cache_dir
from otf_flows.faults import failpoint
from otf_flows.frames import frame_from_labels
from otf_flows.jobs.base import job_settings, timed
from otf_flows.labels import Labels, settings_hash
from otf_flows.md.segment import initial_state, run_segment
from otf_flows.md.state import checked_frame, state_doc, state_id
from otf_flows.reference.base import ReferenceEngine
from otf_flows.reference.registry import get_engine
from otf_flows.reference.settings import RUN_KEYS, label_identity
from otf_flows.schemas.documents import FrameDoc
from otf_flows.structures import build_structure
from otf_flows.walkers import track

logger = logging.getLogger(__name__)


def reference_identity(config) -> tuple[str, dict]:
    """Hash and plain dict of the campaign's reference settings
    (:func:`~otf_flows.reference.settings.label_identity` of ``config.reference``)."""
    return label_identity(config.reference)


def _label_hashes(config, ref_hash: str) -> set[str]:
    """``ref_hash`` and the hashes labels of these settings had before run settings, then SCF settings,
    left the hash (so a job interrupted across such an upgrade still finds its label instead of
    computing it twice)."""
    hashes = {ref_hash}
    for exclude in (set(RUN_KEYS), {"retries"}):
        dump = config.reference.model_dump(mode="json", exclude=exclude)
        if dump.get("mixing_beta", 0) is None:  # a field added with SCF_PATH_KEYS: absent from older hashes
            dump.pop("mixing_beta")
        hashes.add(settings_hash(dump))
    return hashes


_checked: set[str] = set()


def reference_engine(config) -> ReferenceEngine:
    """The campaign's reference engine with ``execution.dft.omp_threads`` and its cache (``execution.cache_dir``,
    see :func:`otf_flows.dirs.cache_dir`), checked once per process and settings: the first DFT job on a node
    fails with an install hint if the DFT program is not there."""
    engine = get_engine(config.reference, omp_threads=config.execution.dft.omp_threads,
                        cache_dir=cache_dir(config.execution.cache_dir))
    key = settings_hash(config.reference.model_dump(mode="json"))
    if key not in _checked:
        engine.check_available()
        _checked.add(key)
    return engine


def _stored_label(store, campaign: str, source: str, step: int, atoms: Atoms,
                  ref_hashes: set[str]) -> FrameDoc | None:
    """A frame already labelled for this step and these exact positions (reruns do no DFT twice)."""
    for doc in store.collection("frames").query({"campaign": campaign, "source": source, "md_step": step}):
        frame = FrameDoc.model_validate({k: v for k, v in doc.items() if k not in ("_id", "last_updated")})
        if frame.reference_hash in ref_hashes and np.allclose(frame.positions, atoms.positions, atol=1e-10, rtol=0):
            return frame
    return None


class ReferenceCalculator(Calculator):
    """ASE calculator that labels each frame of a reference-driven MD once and stores it.

    The MD step of a label comes from the dynamics, not from counting calls: :meth:`advance`
    (``run_segment``'s ``progress`` callback) tells the last completed step; the configuration
    evaluated next is that step's while it is unlabelled (the start), else the next step's.
    NPTBerendsen rescales positions and cell before its first half kick and asks for forces
    there; that evaluation reuses the labels of the step's starting frame (what passing the
    previous forces to its ``step()`` does), so every MD step costs one reference call.
    Consecutive CP2K labels reuse the previous step's wavefunction (``SCF_GUESS RESTART``).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "forces", "stress"]

    def __init__(self, store, campaign: str, config, first_step: int, workdir: Path, walker: str | None = None):
        super().__init__()
        self.store, self.campaign, self.walker = store, campaign, walker  # the MD loop gets none of the settings
        self.engine = reference_engine(config)
        self.ref_hash, self.ref_settings = reference_identity(config)
        self.ref_hashes = _label_hashes(config, self.ref_hash)
        self.step = first_step  # last completed MD step (the start before the first step)
        self.workdir = Path(workdir)
        self.n_labels = 0  # frames labelled (stored or found in the store) by this calculator
        self._labelled: int | None = None  # MD step of the last label
        self._last: tuple | None = None  # (numbers, pbc, cell, scaled positions, results) of the last label
        self._previous: tuple[Atoms, Labels] | None = None  # last frame labelled by the engine here, its labels

    def advance(self, step: int) -> None:
        """The dynamics completed MD step ``step``."""
        self.step = step

    def _label(self, step: int) -> Labels:
        """Reference labels of the current atoms; an engine that can (CP2K) starts from the wavefunction
        of the previous step's label when that was computed here (it decides whether the frames are close)."""
        atoms = self.atoms.copy()
        workdir = self.workdir / f"step_{step:06d}"
        if getattr(self.engine, "reuses_wavefunction", False):
            labels = self.engine.label(atoms, workdir, restart=self._previous)
            self._previous = (atoms, labels)
            return labels
        return self.engine.label(atoms, workdir)

    def _rescaled(self) -> bool:
        """Whether the atoms are the last labelled frame with positions and cell scaled together."""
        if self._last is None:
            return False
        numbers, pbc, cell, scaled, _ = self._last
        atoms = self.atoms
        return (np.array_equal(atoms.numbers, numbers) and np.array_equal(atoms.pbc, pbc)
                and not np.array_equal(atoms.cell.array, cell)
                and np.allclose(atoms.get_scaled_positions(wrap=False), scaled, rtol=0, atol=1e-9))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self._rescaled():
            self.results = {k: np.copy(v) for k, v in self._last[4].items()}
            return
        step = self.step if self._labelled is None or self._labelled < self.step else self.step + 1
        if step == self._labelled:
            logger.warning("a second reference evaluation within MD step %d", step)
        frame = _stored_label(self.store, self.campaign, "initial_md", step, self.atoms, self.ref_hashes)
        if frame is None:
            with timed(self.store, self.campaign, "reference", "initial-md",
                       f"{track(self.campaign, self.walker)}:initial:{step}", step, self.walker):
                labels = self._label(step)
            frame = frame_from_labels(
                self.atoms, labels, source="initial_md", reference_hash=self.ref_hash,
                reference=self.ref_settings, campaign=self.campaign, md_step=step,
            )
            frame.walker = self.walker
            self.store.add_frame(frame, training_in=self.campaign)
            failpoint("initial_md.labelled", self.walker)
            progress.emit("reference", step=step, seconds=labels.seconds, kind="initial", walker=self.walker)
        else:
            self._previous = None  # a label from the store: the next one starts from atomic densities
        self.results["energy"] = frame.energy
        self.results["forces"] = np.array(frame.forces)
        if frame.virial is not None:
            from ase.stress import full_3x3_to_voigt_6_stress

            self.results["stress"] = full_3x3_to_voigt_6_stress(-np.array(frame.virial) / self.atoms.get_volume())
        self._labelled = step
        self.n_labels += 1
        self._last = (self.atoms.numbers.copy(), self.atoms.pbc.copy(), self.atoms.cell.array.copy(),
                      self.atoms.get_scaled_positions(wrap=False), dict(self.results))


@dataclass
class InitialMDMaker(Maker):
    """Starting state, imported ``previous_data`` and ``num_initial_steps`` reference-driven MD steps.

    Every frame of the reference MD (steps 0..num_initial_steps) is labelled and stored as
    training data of the campaign. ``after`` only orders the job (after the job registering the campaign).
    """

    name: str = "initial reference MD"
    config: CampaignConfig | None = None  # the trajectory's settings (a walker's), set when the flow is built
    walker: str | None = None  # the walker whose trajectory starts here (None: a campaign without walkers)

    @job
    def make(self, campaign: str, store: str | None, after=None):
        st, config = job_settings(self.config, campaign, store, self.walker)
        n = config.num_initial_steps
        start_id = state_id(track(campaign, self.walker), n, None)
        imported = import_previous_data(st, config.refit, config.model.initial_model, campaign)
        existing = st.find_state(start_id)
        if existing is None:
            atoms = build_structure(config.structure)
            start = initial_state(atoms, config.md)
            if n == 0:
                st.put_state(state_doc(campaign, start, walker=self.walker))
            else:
                calc = ReferenceCalculator(st, campaign, config, start.step, Path.cwd() / "reference", self.walker)

                def on_step(step: int) -> None:
                    calc.advance(step)  # the dynamics, not the number of calls, sets the labels' md_step
                    progress.emit("md_step", step=step, walker=self.walker)

                result = run_segment(start, calc, config.md, n, config.md.trajectory_interval, progress=on_step)
                traj = st.put_blob(result.trajectory_xyz) if result.n_frames else None
                st.put_state(state_doc(campaign, result.state, walker=self.walker, trajectory=traj))
        if self.walker is None:
            st.update_campaign(campaign, state_id=start_id, step=n, status="running")
        elif st.get_walker(campaign, self.walker) is None:  # a rerun keeps the progress the walker made since
            st.update_walker(campaign, self.walker, state_id=start_id, step=n, interval=config.check_interval,
                             total_steps=config.md.total_steps)
        return {"state_id": start_id, "step": n, "n_imported": imported}


@dataclass
class ReferenceCheckMaker(Maker):
    """Reference single point on the checked frame of a segment: its last frame, or the one the segment
    recorded as ``check_frame`` (``uncertainty.check: most_uncertain``); the frame is stored (not yet as
    training data)."""

    name: str = "reference check"
    config: CampaignConfig | None = None  # the trajectory's settings (a walker's), set when the flow is built
    walker: str | None = None  # the walker whose frame is checked (None: a campaign without walkers)

    @job
    def make(self, campaign: str, store: str | None, segment: dict):
        st, config = job_settings(self.config, campaign, store)
        state = st.get_state(segment["state_id"])
        failpoint("check.start", self.walker)
        atoms, step = checked_frame(state)
        ref_hash, ref_settings = reference_identity(config)
        frame = _stored_label(st, campaign, "check", step, atoms, _label_hashes(config, ref_hash))
        seconds = 0.0
        if frame is None:
            engine = reference_engine(config)
            with timed(st, campaign, "reference", self.name, f"{campaign}:ref:{state.state_id}", state.step,
                       self.walker):
                labels: Labels = engine.label(atoms, Path.cwd() / f"check_{step:06d}")
                failpoint("check.computing", self.walker)
            seconds = labels.seconds
            frame = frame_from_labels(
                atoms, labels, source="check", reference_hash=ref_hash, reference=ref_settings,
                campaign=campaign, md_step=step,
            )
            frame.walker = self.walker
            st.add_frame(frame)
            failpoint("check.labelled", self.walker)
        else:
            entry = st.collection("ledger").query_one({"entry_id": f"{campaign}:ref:{state.state_id}"})
            seconds = entry["seconds"] if entry else 0.0
        progress.emit("reference", step=step, seconds=seconds, kind="check", walker=self.walker)
        return {"frame_id": frame.frame_id, "step": step, "reference_seconds": seconds}


__all__ = ["InitialMDMaker", "ReferenceCalculator", "ReferenceCheckMaker"]
