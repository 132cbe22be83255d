"""The ML-MD segment job: ``n_steps`` of ASE MD with the current model."""

from __future__ import annotations

from dataclasses import dataclass

from jobflow import Maker, job

from otf_flows import progress
from otf_flows.campaign import CampaignConfig
from otf_flows.errors import ConfigError
from otf_flows.faults import failpoint
from otf_flows.lineage import current_model
from otf_flows.jobs.base import job_settings, timed
from otf_flows.jobs.routing import omp_threads
from otf_flows.md.guard import make_guard
from otf_flows.md.segment import UncertaintyMonitor, run_segment
from otf_flows.md.state import state_doc, state_from_doc, state_id
from otf_flows.ml.registry import get_backend, model_dir
from otf_flows.walkers import track


@dataclass
class MDSegmentMaker(Maker):
    """Continue the trajectory from a stored state for ``n_steps`` with a model.

    The end state (positions, velocities, cell, RNG state, step) and the model's energy,
    forces and virial of the last frame are stored; the trajectory goes to the blob store.
    The blow-up guard may stop the segment early; the output says why. A walker's segment
    (``walker`` set) runs with the campaign's newest model when it starts, ``model_id`` or a newer
    one (:func:`segment_model`).
    """

    name: str = "ml-md segment"
    config: CampaignConfig | None = None  # the trajectory's settings (a walker's), set when the flow is built
    walker: str | None = None  # the walker whose trajectory continues (None: a campaign without walkers)

    @job
    def make(self, campaign: str, store: str | None, start_state_id: str, model_id: str, n_steps: int):
        st, config = job_settings(self.config, campaign, store, self.walker)
        if self.walker is not None:
            model_id = segment_model(st, config, self.walker, start_state_id, model_id)
        start = st.get_state(start_state_id)
        guard_settings = config.md.guard.model_dump(mode="json")
        done = st.find_state(state_id(track(campaign, self.walker), start.step + n_steps, model_id))
        if done is None or done.start_state_id != start_state_id:
            # a guard-stopped segment ends earlier; look it up by its start
            done = _stopped(st, start_state_id, model_id, guard_settings)
        if done is None or done.start_state_id != start_state_id:
            done = _ended_by_uncertainty(st, start_state_id, model_id)
        if done is not None:
            return {"state_id": done.state_id, "step": done.step, "stopped_early": done.stopped_early,
                    "start_state_id": start_state_id}

        def on_step(step: int) -> None:
            progress.emit("md_step", step=step, walker=self.walker)
            failpoint("md.step", self.walker)

        threads = omp_threads("md", config.execution) or config.model.num_threads
        backend = get_backend(st.get_model(model_id).backend)
        with timed(st, campaign, "ml_md", self.name, f"{campaign}:md:{start_state_id}:{model_id}:{n_steps}",
                   start.step, self.walker), backend.threads(threads):
            calc = backend.calculator(model_dir(st, model_id, config.execution.cache_dir), cached=True)
            monitor = uncertainty_monitor(st, campaign, config.uncertainty, model_id, calc, backend)
            result = run_segment(
                state_from_doc(start), calc, config.md, n_steps, config.md.trajectory_interval,
                guard=make_guard(config.md.guard, config.md.temperature_K), progress=on_step,
                uncertainty=monitor,
            )
        traj = st.put_blob(result.trajectory_xyz) if result.n_frames else None
        virial = None if result.virial is None else result.virial.tolist()
        doc = state_doc(
            campaign, result.state, model_id=model_id, walker=self.walker, ml_energy=result.energy,
            ml_forces=result.forces.tolist(),
            ml_virial=virial, trajectory=traj, stopped_early=result.stopped_early, start_state_id=start_state_id,
            guard_settings=guard_settings if result.stopped_early else None,
            uncertainty_stop=result.uncertainty_stop, ml_uncertainty=result.uncertainty,
            uncertainty_threshold=None if monitor is None else monitor.threshold,
            uncertainty_seconds=result.uncertainty_seconds, n_uncertainty_evals=result.n_uncertainty_evals,
            check_frame=result.check_frame,
        )
        st.put_state(doc)
        return {"state_id": doc.state_id, "step": doc.step, "stopped_early": result.stopped_early,
                "start_state_id": start_state_id}


def segment_model(store, config: CampaignConfig, walker: str, start_state_id: str, model_id: str) -> str:
    """The model of a walker's segment from ``start_state_id``: the campaign's newest when the segment first
    runs (at least ``model_id``, the one the graph names, e.g. the refit after the walker's failed check),
    recorded in the walker's document so that a rerun of the segment (after a kill) uses the same one."""
    doc = store.get_walker(config.name, walker)
    given = store.get_model(model_id)
    if doc is not None and doc.segment_start_state_id == start_state_id and doc.segment_model_id is not None:
        pinned = store.get_model(doc.segment_model_id)
        if pinned.version >= given.version:
            return pinned.model_id
    gate = config.validation.promotion
    newest = current_model(store, config.name, keep_parent=gate is not None and gate.keep_parent)
    chosen = newest.model_id if newest is not None and newest.version > given.version else model_id
    store.update_walker(config.name, walker, segment_start_state_id=start_state_id, segment_model_id=chosen)
    return chosen


def calibrated_threshold(store, campaign: str, settings, model_id: str) -> float | None:
    """The uncertainty threshold of a segment driven by ``model_id`` (eV; None: record only).

    An absolute ``threshold`` is used as it is. With ``calibrate_factor`` it is the factor
    times the largest uncertainty seen at the passed checks of ``model_id``; before the
    model has passed a check, of the most recent model that has (None if no model has).
    """
    if settings.threshold is not None:
        return settings.threshold
    passed = [c for c in store.checks(campaign) if c.passed and c.uncertainty is not None]
    own = [c.uncertainty for c in passed if c.model_id == model_id]
    if not own and passed:
        latest = max(passed, key=lambda c: c.created_at).model_id
        own = [c.uncertainty for c in passed if c.model_id == latest]
    return settings.calibrate_factor * max(own) if own else None


def uncertainty_monitor(store, campaign: str, settings, model_id: str, calc, backend) -> UncertaintyMonitor | None:
    """The segment's uncertainty monitor from ``uncertainty`` settings (None when disabled), with
    ``backend``'s probe of ``calc``; a :class:`ConfigError` when the backend has no uncertainty."""
    if not settings.enabled:
        return None
    probe = backend.uncertainty(calc, settings)
    if probe is None:
        raise ConfigError(f"uncertainty.enabled: model.backend {backend.name} has no uncertainty; set enabled: false")
    return UncertaintyMonitor(
        probe=probe, every=settings.every,
        threshold=calibrated_threshold(store, campaign, settings, model_id), min_steps=settings.min_steps,
        check=settings.check,
    )


def _ended_by_uncertainty(st, start_state_id: str, model_id: str):
    doc = st.collection("states").query_one(
        {"start_state_id": start_state_id, "model_id": model_id, "uncertainty_stop": {"$ne": None}}
    )
    return st.get_state(doc["state_id"]) if doc else None


def _stopped(st, start_state_id: str, model_id: str, guard_settings: dict):
    """The stored segment from ``start_state_id`` with ``model_id`` that the guard stopped, if the guard's
    settings were then ``guard_settings`` (or not recorded): under settings loosened on --resume the
    segment runs again."""
    docs = st.collection("states").query(
        {"start_state_id": start_state_id, "model_id": model_id, "stopped_early": {"$ne": None}},
        properties=["state_id", "guard_settings"],
    )
    for doc in docs:
        if doc.get("guard_settings") in (None, guard_settings):
            return st.get_state(doc["state_id"])
    return None
