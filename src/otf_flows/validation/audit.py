"""Audit: the campaign's reference on ML-MD frames drawn at random between the checks.

A check tests the model on one frame per segment; the frames between checks are never
labelled. An audit labels ``k`` of them, drawn at random from the accepted trajectory after a
warm-up, with the campaign's own reference (DFT), and counts how many lie outside the
tolerances: the hidden error of the benchmarks with a cheap reference on every frame, now
against the real one. The fraction comes with a binomial 90 % interval (Clopper-Pearson), which
for 10 frames is wide: 0 of 10 outside means at most 26 %.

The labels are stored as frames of source ``audit`` (never trained on) and their time in the
ledger, so the audit's DFT calls count in the campaign's cost (``otf status``). An audit run
again with the same seed finds its labels and makes no new DFT call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase import Atoms

from otf_flows.checks import error_metrics, passes
from otf_flows.errors import InputError
from otf_flows.frames import frame_from_labels
from otf_flows.labels import virial_from_stress
from otf_flows.reference.registry import get_engine
from otf_flows.reference.settings import label_identity
from otf_flows.schemas.documents import FrameDoc, LedgerEntry, now
from otf_flows.trajectory import trajectory_frames
from otf_flows.walkers import track, walker_configs

__all__ = ["audit_candidates", "binomial_interval", "run_audit"]

logger = logging.getLogger(__name__)

#: Default warm-up: frames in the first tenth of the MD steps reached are not drawn.
WARM_UP_FRACTION = 0.1


def binomial_interval(outside: int, n: int, level: float = 0.9) -> tuple[float, float]:
    """Clopper-Pearson interval of a fraction ``outside / n`` (two-sided, ``level``)."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - level) / 2
    low = 0.0 if outside == 0 else float(beta.ppf(tail, outside, n - outside + 1))
    high = 1.0 if outside == n else float(beta.ppf(1.0 - tail, outside + 1, n - outside))
    return low, high


def audit_candidates(store, config, walker: str | None = None, after_step: int | None = None) -> list[Atoms]:
    """The ML-MD frames of the accepted trajectory (of ``walker``; None: of every walker) that no check labelled,
    after ``after_step`` (default: the first tenth of the steps reached)."""
    frames = [a for a in trajectory_frames(store, config.name, walker=walker) if a.info.get("driver") == "model"]
    checked = set()
    for c in store.checks(config.name):
        checked |= {(c.walker, c.step), (c.walker, c.frame_step)}
    if after_step is None:
        reached = max((int(a.info["md_step"]) for a in frames), default=0)
        after_step = int(WARM_UP_FRACTION * reached)
    return [a for a in frames if int(a.info["md_step"]) > after_step
            and (a.info.get("walker"), int(a.info["md_step"])) not in checked]


def _stored(store, campaign: str, atoms: Atoms, walker: str | None, ref_hash: str) -> FrameDoc | None:
    """An audit label of this frame stored before (same step, walker, positions and reference settings)."""
    step = int(atoms.info["md_step"])
    for doc in store.collection("frames").query({"campaign": campaign, "source": "audit", "md_step": step}):
        frame = FrameDoc.model_validate({k: v for k, v in doc.items() if k != "_id"})
        if (frame.walker == walker and frame.reference_hash == ref_hash
                and np.allclose(frame.positions, atoms.positions, rtol=0, atol=1e-8)):
            return frame
    return None


def run_audit(store, config, k: int, seed: int = 0, after_step: int | None = None, walker: str | None = None,
              workdir: str | Path = ".", progress: Callable[[str], None] | None = None) -> dict:
    """Label ``k`` random ML-MD frames between the checks of campaign ``config`` with its reference; per frame
    the errors of the model that drove it, and how many lie outside the tolerances with a 90 % interval.

    Raises :class:`InputError` when the campaign kept no ML-MD frames to draw from (``md.trajectory_interval``).
    """
    candidates = audit_candidates(store, config, walker, after_step)
    if not candidates:
        raise InputError(f"campaign {config.name!r} has no ML-MD frames between its checks to audit "
                         "(md.trajectory_interval 0 keeps none; or nothing after the warm-up)")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(candidates), size=min(k, len(candidates)), replace=False))
    tolerances = {name: w.tolerances.model_dump() for name, w in walker_configs(config).items()}
    tolerances[None] = config.tolerances.model_dump()
    engine = get_engine(config.reference)
    ref_hash, ref_settings = label_identity(config.reference)
    rows, new_calls = [], 0
    for n, index in enumerate(picked, start=1):
        atoms = candidates[index]
        step, who = int(atoms.info["md_step"]), atoms.info.get("walker")
        frame = _stored(store, config.name, atoms, who, ref_hash)
        if frame is None:
            frame_atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            started = now()
            labels = engine.label(frame_atoms, Path(workdir) / f"audit_{who or 'traj'}_{step:07d}")
            frame = frame_from_labels(frame_atoms, labels, source="audit", reference_hash=ref_hash,
                                      reference=ref_settings, campaign=config.name, md_step=step)
            frame.walker = who
            store.add_frame(frame)
            store.record_time(LedgerEntry(campaign=config.name, kind="reference", seconds=labels.seconds,
                                          job="audit", step=step, walker=who, started_at=started),
                              f"{track(config.name, who)}:audit:{step}:{frame.frame_id}")
            new_calls += 1
        ml_virial = None
        if frame.virial is not None and "stress" in (atoms.calc.results if atoms.calc else {}):
            ml_virial = virial_from_stress(atoms.get_stress(), atoms.get_volume())
        errors = error_metrics(len(atoms), atoms.get_potential_energy(), frame.energy, atoms.get_forces(),
                               frame.forces, ml_virial, frame.virial)
        tol = tolerances.get(who, tolerances[None])
        rows.append({"step": step, "walker": who, "model_id": atoms.info.get("model_id"), "frame_id": frame.frame_id,
                     **errors, "outside": not passes(errors, tol)})
        if progress is not None:
            progress(f"audit frame {n}/{len(picked)}: step {step}{' of ' + who if who else ''}, "
                     f"{'outside' if rows[-1]['outside'] else 'within'} the tolerances")
    outside = sum(r["outside"] for r in rows)
    low, high = binomial_interval(outside, len(rows))
    return {"campaign": config.name, "walker": walker, "seed": seed, "frames": len(rows), "candidates": len(candidates),
            "frames_outside": outside, "fraction_outside": outside / len(rows), "interval_90": [low, high],
            "new_dft_calls": new_calls, "rows": rows}
