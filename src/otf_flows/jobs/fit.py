"""The refit job: the campaign's ML backend fits a new model version on all its training data."""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from jobflow import Maker, job

from otf_flows import progress
from otf_flows.campaign import CampaignConfig, trains_on_virials_of
from otf_flows.errors import FitFailedError
from otf_flows.faults import failpoint
from otf_flows.lineage import current_model, lease
from otf_flows.frames import frame_level_of_theory, frame_to_atoms
from otf_flows.jobs.base import job_settings, timed
from otf_flows.labels import VIRIAL_KEY
from otf_flows.ml.registry import get_backend, model_dir
from otf_flows.schemas.documents import ModelDoc

logger = logging.getLogger(__name__)


def mixed_levels_of_theory(frames) -> str | None:
    """A warning when ``frames`` come from more than one level of theory (None when they do not)."""
    levels = Counter(frame_level_of_theory(f) for f in frames)
    if len(levels) < 2:
        return None
    counts = "; ".join(f"{n} from {level}" for level, n in levels.most_common())
    return f"trained on frames of {len(levels)} levels of theory: {counts}"


def register_fit(store, result, frames, *, model_id, version, campaign, parent, trigger, trigger_step, settings,
                 backend: str = "gap", trigger_walker: str | None = None):
    """Store a finished fit's archive and model document of ``backend`` (with a warning, logged and in
    ``ModelDoc.warnings``, when its training frames mix levels of theory)."""
    artifact = store.put_blob(get_backend(backend).pack(result.model_dir))
    mixed = mixed_levels_of_theory(frames)
    if mixed:
        logger.warning("model %s: %s", model_id, mixed)
    model = ModelDoc(
        model_id=model_id,
        version=version,
        campaign=campaign,
        backend=backend,
        parent_model_id=parent,
        training_frame_ids=[f.frame_id for f in frames],
        n_training_frames=len(frames),
        trigger_check_id=trigger,
        trigger_check_step=trigger_step,
        trigger_walker=trigger_walker,
        fit_settings={"command": result.command[1:], **settings, **result.meta},
        fit_log_summary=result.log_tail,
        fit_seconds=result.seconds,
        artifact=artifact,
        warnings=[mixed] if mixed else [],
    )
    store.put_model(model)
    return model


def training_atoms(frames, virials: bool) -> list:
    """The frames as training structures (labels in ``REF_*`` keys), without their virials unless ``virials``."""
    atoms = [frame_to_atoms(f) for f in frames]
    if not virials:
        for a in atoms:
            a.info.pop(VIRIAL_KEY, None)
    return atoms


@dataclass
class RefitMaker(Maker):
    """Fit a new model version on every training frame of the campaign.

    ``trigger_check_id`` is the failed check that asked for the fit (None for the first
    fit). ``after`` only orders the job after another job's output (the training data is
    read from the store). Rerunning the job returns the model already fitted for that trigger.

    In a campaign with walkers the fit holds the campaign's refit lease (:mod:`otf_flows.lineage`):
    one refit at a time, the parent is the campaign's newest model, and a refit whose trigger label
    is in the newest model already (fitted while this one waited) fits nothing: it answers with that model.
    """

    name: str = "refit"
    config: CampaignConfig | None = None  # the campaign's settings, set when the flow is built
    walker: str | None = None  # the walker whose check triggered the refit (None: first fit, or no walkers)

    @job
    def make(
        self,
        campaign: str,
        store: str | None,
        parent_model_id: str | None = None,
        trigger_check_id: str | None = None,
        after=None,
    ):
        st, config = job_settings(self.config, campaign, store)
        shared = config.walkers is not None
        with lease(st, campaign, holder=self.walker) if shared else nullcontext():
            if shared:
                failpoint("fit.leased", self.walker)
                parent_model_id, existing = _lineage_parent(st, config, campaign, parent_model_id, trigger_check_id)
            else:
                existing = st.find_model({"campaign": campaign, "trigger_check_id": trigger_check_id})
            return self._fit(st, config, campaign, parent_model_id, trigger_check_id, existing)

    def _fit(self, st, config, campaign, parent_model_id, trigger_check_id, existing):
        if existing is None:
            check = st.get_check(trigger_check_id) if trigger_check_id else None
            frames = st.training_frames(campaign)
            version = len(st.models(campaign)) + 1
            model_id = f"{campaign}-v{version}"
            backend = get_backend(config.model.backend)
            parent_dir = _parent_dir(st, parent_model_id, backend.name, config.execution.cache_dir)
            with timed(st, campaign, "fit", self.name, f"{campaign}:fit:{model_id}", walker=self.walker):
                try:
                    virials = trains_on_virials_of(config.refit, config.md, config.tolerances, config.walkers)
                    result = fit_model(
                        backend, training_atoms(frames, virials), Path.cwd() / f"fit_{model_id}",
                        config.model, config.refit, parent_dir=parent_dir,
                        num_threads=config.execution.fit.omp_threads or config.model.num_threads, seed=config.md.seed,
                    )
                except FitFailedError as err:
                    if parent_model_id is None:
                        raise
                    return self._keep_parent(st, campaign, parent_model_id, trigger_check_id, err)
            failpoint("fit.done", self.walker)
            existing = register_fit(
                st, result, frames, model_id=model_id, version=version, campaign=campaign,
                parent=parent_model_id, trigger=trigger_check_id, trigger_step=check.step if check else None,
                settings=result.settings, backend=backend.name, trigger_walker=self.walker,
            )
        if trigger_check_id:
            check = st.get_check(trigger_check_id)
            if check is not None and check.new_model_id != existing.model_id:
                st.put_check(check.model_copy(update={"new_model_id": existing.model_id}))
        st.update_campaign(campaign, model_id=existing.model_id, pending_refit=None)
        if self.walker is not None:
            st.update_walker(campaign, self.walker, pending_refit=None)
        progress.emit("refit", model_id=existing.model_id, n_frames=existing.n_training_frames,
                      seconds=existing.fit_seconds, walker=self.walker)
        return {"model_id": existing.model_id}

    def _keep_parent(self, st, campaign, parent_model_id, trigger_check_id, err):
        """Every attempt failed: record why on the check and go on with the parent model."""
        logger.warning("refit failed, keeping %s: %s", parent_model_id, err)
        if trigger_check_id:
            check = st.get_check(trigger_check_id)
            st.put_check(check.model_copy(update={"refit_error": str(err)[:500]}))
        st.update_campaign(campaign, model_id=parent_model_id, pending_refit=None)
        if self.walker is not None:
            st.update_walker(campaign, self.walker, pending_refit=None)
        progress.emit("refit_failed", model_id=parent_model_id, error=str(err))
        return {"model_id": parent_model_id, "refit_error": str(err)}


def _lineage_parent(st, config, campaign: str, parent_model_id: str | None, trigger_check_id: str | None):
    """(parent, existing model) of a refit of a campaign with walkers, under the refit lease.

    The parent is the campaign's newest model (another walker's refit may have followed the one
    the graph names); the existing model is the one already fitted for this trigger, or the newest
    model when it was trained on the trigger's label already (then the trigger is recorded among the
    model's ``merged_check_ids``: its refit was merged into that one).
    """
    existing = st.find_model({"campaign": campaign, "trigger_check_id": trigger_check_id})
    gate = config.validation.promotion
    newest = current_model(st, campaign, keep_parent=gate is not None and gate.keep_parent)
    if existing is not None or newest is None:
        return parent_model_id, existing
    check = st.get_check(trigger_check_id) if trigger_check_id else None
    if check is not None and check.frame_id in newest.training_frame_ids:
        if trigger_check_id not in newest.merged_check_ids:
            newest = newest.model_copy(update={"merged_check_ids": [*newest.merged_check_ids, trigger_check_id]})
            st.put_model(newest)
        logger.info("refit for %s: its label is in %s already", trigger_check_id, newest.model_id)
        return newest.parent_model_id, newest
    return newest.model_id, None


def fit_model(backend, frames, workdir: Path, model, refit, *, parent_dir: Path | None = None,
              num_threads: int | None = None, seed: int | None = 1):
    """``backend``'s fit of ``frames`` in ``workdir`` (a backend retries as it sees fit: GAP with a
    larger sparse_jitter, then fewer sparse points); raises :class:`FitFailedError`."""
    return backend.fit(frames, workdir, model, refit, parent_dir=parent_dir, num_threads=num_threads, seed=seed)


def _parent_dir(store, parent_model_id: str | None, backend: str, cache) -> Path | None:
    """The extracted parent model a fit of ``backend`` may continue from (None: none, or another backend's)."""
    if parent_model_id is None:
        return None
    parent = store.get_model(parent_model_id)
    if parent.backend != backend:
        logger.info("parent %s is a %s model: the %s fit starts from scratch", parent_model_id, parent.backend,
                    backend)
        return None
    return model_dir(store, parent_model_id, cache)
