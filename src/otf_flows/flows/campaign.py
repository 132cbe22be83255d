"""The campaign graph: initial data → first fit → iterations (each emitting the next).

Only one iteration exists in the graph at a time: every compare + decide job adds the
next one through ``Response.addition``, so the graph never grows with the campaign length.
"""

from __future__ import annotations

from jobflow import Flow

from otf_flows.campaign import CampaignConfig
from otf_flows.jobs.decide import FinishMaker, iteration_flow
from otf_flows.jobs.fit import RefitMaker
from otf_flows.jobs.reference import InitialMDMaker
from otf_flows.jobs.routing import route
from otf_flows.jobs.validate import ValidateMaker
from otf_flows.schemas.documents import CampaignDoc


def campaign_flow(config: CampaignConfig, store: str) -> Flow:
    """The whole campaign from scratch: initial data, first fit (unless ``model.initial_model``), first iteration."""
    campaign, initial_model = config.name, config.model.initial_model
    execution = config.execution
    initial = route(InitialMDMaker().make(campaign, store), "dft", execution)
    jobs = [initial]
    model = initial_model
    if initial_model is None:
        fit = route(RefitMaker().make(campaign, store, after=initial.output["state_id"]), "fit", execution)
        fit.name = "first fit"
        jobs.append(fit)
        model = fit.output["model_id"]
    first = iteration_flow(
        campaign, store, initial.output["state_id"], model, config.num_initial_steps, config.check_interval,
        config.md.total_steps, execution,
    )
    jobs.append(first)
    return Flow(jobs, name=f"otf campaign {campaign}")


def resume_flow(doc: CampaignDoc, store: str) -> Flow:
    """Continue a campaign from its progress pointer in the store."""
    config = CampaignConfig.model_validate(doc.config)
    total = config.md.total_steps
    if doc.state_id is None:
        return campaign_flow(config, store)
    jobs = []
    model = doc.model_id
    if doc.model_id is None or doc.pending_refit is not None:
        fit = route(
            RefitMaker().make(doc.name, store, parent_model_id=doc.model_id, trigger_check_id=doc.pending_refit),
            "fit", config.execution,
        )
        jobs.append(fit)
        model = fit.output["model_id"]
    if doc.step >= total:
        final = route(ValidateMaker().make(doc.name, store, model), "light", config.execution)
        jobs += [final, route(FinishMaker().make(doc.name, store, final.output["model_id"]), "light", config.execution)]
    else:
        interval = doc.interval or config.check_interval
        jobs.append(iteration_flow(doc.name, store, doc.state_id, model, doc.step, interval, total, config.execution))
    return Flow(jobs, name=f"otf campaign {doc.name} (resumed at step {doc.step})")
