"""The refit job: ``gap_fit`` from scratch on all training data of the campaign."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from jobflow import Maker, job

from otf_flows import progress
from otf_flows.backends.gap import PRESETS, fit_gap, pack_model
from otf_flows.frames import frame_to_atoms
from otf_flows.jobs.base import open_campaign, timed
from otf_flows.schemas.documents import ModelDoc

logger = logging.getLogger(__name__)


def register_fit(store, result, frames, *, model_id, version, campaign, parent, trigger, trigger_step, settings):
    """Store a finished fit's archive and model document."""
    artifact = store.put_blob(pack_model(result.model_dir))
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
    )
    store.put_model(model)
    return model


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
                result = fit_gap(
                    [frame_to_atoms(f) for f in frames], Path.cwd() / f"fit_{model_id}", config.refit,
                    descriptor, config.model.num_threads,
                )
            existing = register_fit(
                st, result, frames, model_id=model_id, version=version, campaign=campaign,
                parent=parent_model_id, trigger=trigger_check_id, trigger_step=check.step if check else None,
                settings={"descriptor_str": descriptor, **config.refit.model_dump(mode="json", exclude={"previous_data"})},
            )
        if trigger_check_id:
            check = st.get_check(trigger_check_id)
            if check is not None and check.new_model_id != existing.model_id:
                st.put_check(check.model_copy(update={"new_model_id": existing.model_id}))
        st.update_campaign(campaign, model_id=existing.model_id, pending_refit=None)
        progress.emit("refit", model_id=existing.model_id, n_frames=existing.n_training_frames, seconds=existing.fit_seconds)
        return {"model_id": existing.model_id}
