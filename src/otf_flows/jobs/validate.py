"""The validation job: a model on the campaign's benchmark sets and untrained check frames."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from jobflow import Maker, Response, job

from otf_flows import progress
from otf_flows.campaign import CampaignConfig
from otf_flows.jobs.base import job_settings, timed
from otf_flows.jobs.physical_flow import final_benchmarks
from otf_flows.validation.evaluate import model_calculator, run_validation, validate_model
from otf_flows.validation.sets import CHECKS, common_untrained_frames, get_validation

logger = logging.getLogger(__name__)


def promotion_verdict(new: dict, parent: dict, gate) -> str | None:
    """The flag text when ``new`` is worse than ``parent`` by more than ``gate.max_ratio`` (else None)."""
    a, b = new.get(gate.metric), parent.get(gate.metric)
    if a is None or b is None or b <= 0:
        return None
    if a > gate.max_ratio * b:
        return (f"promotion gate: {gate.metric} {a:.4g} on {new['benchmark']} is {a / b:.2f}x the parent's "
                f"{b:.4g} (allowed {gate.max_ratio}x)")
    return None


@dataclass
class ValidateMaker(Maker):
    """Validate a model; with a promotion gate, flag it and maybe keep its parent.

    Returns ``{"model_id": ...}``: the model the campaign goes on with.
    """

    name: str = "validate"
    config: CampaignConfig | None = None  # the campaign's settings, set when the flow is built
    walker: str | None = None  # the walker whose check asked for the refit validated here (None: none)

    @job
    def make(self, campaign: str, store: str | None, model_id: str):
        st, config = job_settings(self.config, campaign, store)
        settings = config.validation
        names = list(settings.benchmarks) + ([CHECKS] if settings.checks else [])
        model = st.get_model(model_id)
        results = {}
        cache = config.execution.cache_dir
        with timed(st, campaign, "other", self.name, f"{campaign}:validate:{model_id}"):
            for name in names:
                try:
                    # the check frames grow as the campaign runs: re-validate on them every time
                    cached = None if name == CHECKS else get_validation(st, model_id, name)
                    results[name] = cached or run_validation(st, model_id, name, model_calculator(st, model_id, cache))
                except Exception as err:  # noqa: BLE001 - e.g. no untrained check frames yet
                    logger.info("validation of %s on %s skipped: %s", model_id, name, err)
        chosen = model_id
        gate = settings.promotion
        if gate is not None and model.parent_model_id is not None:
            model = self._gate(st, model, names, gate, cache)
            if model.flags and gate.keep_parent:
                chosen = model.parent_model_id
                if config.walkers is None:  # with walkers the newest unflagged model is the current one
                    st.update_campaign(campaign, model_id=chosen)
        progress.emit("validated", model_id=model_id, benchmarks=sorted(results), kept=chosen)
        output = {"model_id": chosen, "benchmarks": sorted(results), "flags": model.flags}
        physical = final_benchmarks(st, config, campaign, store, chosen)  # validation.physical, after the last step
        return Response(output=output, addition=physical) if physical is not None else output

    @staticmethod
    def _gate(st, model, names: list[str], gate, cache: str | None = None):
        """Compare the model with its parent on each benchmark's frames that neither was trained on."""
        parent = st.get_model(model.parent_model_id)
        for name in names:
            frames = common_untrained_frames(st, model, parent, name)
            if not frames:
                logger.info("promotion gate on %s skipped: no frames that neither %s nor %s was trained on",
                            name, model.model_id, parent.model_id)
                continue
            new = validate_model(st, model.model_id, frames, name, model_calculator(st, model.model_id, cache))
            old = validate_model(st, parent.model_id, frames, name, model_calculator(st, parent.model_id, cache))
            flag = promotion_verdict(new, old, gate)
            if flag:
                flag = f"{flag} ({len(frames)} frames neither model was trained on)"
                if flag not in model.flags:
                    model = model.model_copy(update={"flags": [*model.flags, flag]})
                    st.put_model(model)
        return model
