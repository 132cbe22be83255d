"""The refit job: ``gap_fit`` from scratch on all training data of the campaign."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from jobflow import Maker, job

from otf_flows import progress
from otf_flows.backends.gap import PRESETS, VIRIAL_KEY, fit_gap, pack_model, split_opts, with_option
from otf_flows.errors import FitFailedError
from otf_flows.faults import failpoint
from otf_flows.frames import frame_level_of_theory, frame_to_atoms
from otf_flows.jobs.base import open_campaign, timed
from otf_flows.schemas.documents import ModelDoc

logger = logging.getLogger(__name__)


def mixed_levels_of_theory(frames) -> str | None:
    """A warning when ``frames`` come from more than one level of theory (None when they do not)."""
    levels = Counter(frame_level_of_theory(f) for f in frames)
    if len(levels) < 2:
        return None
    counts = "; ".join(f"{n} from {level}" for level, n in levels.most_common())
    return f"trained on frames of {len(levels)} levels of theory: {counts}"


def register_fit(store, result, frames, *, model_id, version, campaign, parent, trigger, trigger_step, settings):
    """Store a finished fit's archive and model document (with a warning, logged and in
    ``ModelDoc.warnings``, when its training frames mix levels of theory)."""
    artifact = store.put_blob(pack_model(result.model_dir))
    mixed = mixed_levels_of_theory(frames)
    if mixed:
        logger.warning("model %s: %s", model_id, mixed)
    model = ModelDoc(
        model_id=model_id,
        version=version,
        campaign=campaign,
        parent_model_id=parent,
        training_frame_ids=[f.frame_id for f in frames],
        n_training_frames=len(frames),
        trigger_check_id=trigger,
        trigger_check_step=trigger_step,
        fit_settings={"command": result.command[1:], **settings},
        fit_log_summary=result.log_tail,
        fit_seconds=result.seconds,
        artifact=artifact,
        warnings=[mixed] if mixed else [],
    )
    store.put_model(model)
    return model


def training_atoms(frames, virials: bool) -> list:
    """The frames as gap_fit training structures, without their virials unless ``virials``."""
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
    """

    name: str = "refit"

    @job
    def make(
        self,
        campaign: str,
        store: str,
        parent_model_id: str | None = None,
        trigger_check_id: str | None = None,
        after=None,
    ):
        st, config = open_campaign(campaign, store)
        existing = st.find_model({"campaign": campaign, "trigger_check_id": trigger_check_id})
        if existing is None:
            check = st.get_check(trigger_check_id) if trigger_check_id else None
            frames = st.training_frames(campaign)
            version = len(st.models(campaign)) + 1
            model_id = f"{campaign}-v{version}"
            descriptor = config.refit.descriptor_str or PRESETS[config.model.preset]
            with timed(st, campaign, "fit", self.name, f"{campaign}:fit:{model_id}"):
                try:
                    result, refit_used, descriptor = fit_with_retries(
                        training_atoms(frames, config.trains_on_virials), Path.cwd() / f"fit_{model_id}", config.refit,
                        descriptor, config.execution.fit.omp_threads or config.model.num_threads, config.md.seed,
                    )
                except FitFailedError as err:
                    if parent_model_id is None:
                        raise
                    return self._keep_parent(st, campaign, parent_model_id, trigger_check_id, err)
            failpoint("fit.done")
            existing = register_fit(
                st, result, frames, model_id=model_id, version=version, campaign=campaign,
                parent=parent_model_id, trigger=trigger_check_id, trigger_step=check.step if check else None,
                settings={"descriptor_str": descriptor, **refit_used.model_dump(mode="json", exclude={"previous_data"})},
            )
        if trigger_check_id:
            check = st.get_check(trigger_check_id)
            if check is not None and check.new_model_id != existing.model_id:
                st.put_check(check.model_copy(update={"new_model_id": existing.model_id}))
        st.update_campaign(campaign, model_id=existing.model_id, pending_refit=None)
        progress.emit("refit", model_id=existing.model_id, n_frames=existing.n_training_frames, seconds=existing.fit_seconds)
        return {"model_id": existing.model_id}

    def _keep_parent(self, st, campaign, parent_model_id, trigger_check_id, err):
        """Every attempt failed: record why on the check and go on with the parent model."""
        logger.warning("refit failed, keeping %s: %s", parent_model_id, err)
        if trigger_check_id:
            check = st.get_check(trigger_check_id)
            st.put_check(check.model_copy(update={"refit_error": str(err)[:500]}))
        st.update_campaign(campaign, model_id=parent_model_id, pending_refit=None)
        progress.emit("refit_failed", model_id=parent_model_id, error=str(err))
        return {"model_id": parent_model_id, "refit_error": str(err)}


def _fewer_sparse(descriptor: str) -> str:
    """The descriptor string with every n_sparse halved (at least 1)."""
    import re

    return re.sub(r"n_sparse\s*=\s*(\d+)", lambda m: f"n_sparse={max(1, int(m.group(1)) // 2)}", descriptor)


def fit_with_retries(frames, workdir: Path, refit, descriptor: str, num_threads: int | None, seed: int | None = 1):
    """gap_fit, then on failure a larger ``sparse_jitter``, then also fewer sparse points.

    Returns the result with the refit settings and descriptor that worked; raises the last
    :class:`FitFailedError` if all three attempts fail.
    """
    jitter = _jitter(refit.extra_gap_opts)
    larger = max(jitter * 100.0, 1.0e-6)
    bigger_jitter = refit.model_copy(update={"extra_gap_opts": with_option(refit.extra_gap_opts, "sparse_jitter", larger)})
    attempts = [(refit, descriptor), (bigger_jitter, descriptor), (bigger_jitter, _fewer_sparse(descriptor))]
    error = None
    for i, (settings, desc) in enumerate(attempts):
        try:
            return fit_gap(frames, workdir / f"attempt_{i}", settings, desc, num_threads, seed), settings, desc
        except FitFailedError as err:
            logger.warning("gap_fit attempt %d failed: %s", i + 1, err)
            error = err
    raise error


def _jitter(extra_gap_opts: str) -> float:
    for opt in split_opts(extra_gap_opts):
        key, _, value = opt.partition("=")
        if key.strip() == "sparse_jitter":
            try:
                return float(value)
            except ValueError:
                break
    return 1.0e-8
