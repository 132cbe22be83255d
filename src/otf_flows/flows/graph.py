"""The campaign graph: initial data → first fit → iterations (each emitting the next).

Only one iteration exists in the graph at a time: every compare + decide job adds the
next one through ``Response.addition``, so the graph never grows with the campaign length.
Every job's Maker carries the campaign's settings (``config``) and passes them on to the
jobs it emits; jobs find the store by its location only.
"""

from __future__ import annotations

from jobflow import Flow

from otf_flows.campaign import CampaignConfig
from otf_flows.flows.walkers import resume_walkers_flow, walkers_flow
from otf_flows.jobs.base import open_store
from otf_flows.jobs.decide import FinishMaker, iteration_flow
from otf_flows.jobs.fit import RefitMaker
from otf_flows.jobs.reference import InitialMDMaker
from otf_flows.jobs.routing import route
from otf_flows.jobs.validate import ValidateMaker
from otf_flows.schemas.documents import CampaignDoc


def job_config(config: CampaignConfig) -> CampaignConfig:
    """``config`` as the jobs carry it: without ``store`` (jobs get the store's location as an argument,
    and a MongoDB URI with credentials must not travel into job documents or a LaunchPad)."""
    return config if config.store is None else config.model_copy(update={"store": None})


def campaign_flow(config: CampaignConfig, store: str | None, after=None) -> Flow:
    """The whole campaign from scratch: initial data, first fit (unless ``model.initial_model``), first iteration.

    ``after`` (an output reference) orders the initial job after another job, e.g. the one registering the campaign.
    """
    config = job_config(config)
    if config.walkers is not None:
        return walkers_flow(config, store, after=after)
    campaign, initial_model = config.name, config.model.initial_model
    execution = config.execution
    initial = route(InitialMDMaker(config=config).make(campaign, store, after=after), "dft", execution)
    jobs = [initial]
    model = initial_model
    if initial_model is None:
        fit = route(RefitMaker(config=config).make(campaign, store, after=initial.output["state_id"]), "fit",
                    execution)
        fit.name = "first fit"
        jobs.append(fit)
        model = fit.output["model_id"]
    jobs.append(iteration_flow(config, store, initial.output["state_id"], model, config.num_initial_steps,
                               config.check_interval))
    return Flow(jobs, name=f"otf campaign {campaign}")


def resume_flow(doc: CampaignDoc, store: str | None) -> Flow:
    """Continue a campaign from its progress pointer in the store, with the settings stored in ``doc``
    (those of the resuming run: ``--resume`` stores the accepted changes before building this flow)."""
    config = job_config(CampaignConfig.model_validate(doc.config))
    if config.walkers is not None:
        return resume_walkers_flow(config, open_store(store), store)
    total = config.md.total_steps
    if doc.state_id is None:
        return campaign_flow(config, store)
    jobs = []
    model = doc.model_id
    if doc.model_id is None or doc.pending_refit is not None:
        fit = route(
            RefitMaker(config=config).make(doc.name, store, parent_model_id=doc.model_id,
                                           trigger_check_id=doc.pending_refit),
            "fit", config.execution,
        )
        jobs.append(fit)
        model = fit.output["model_id"]
    if doc.step >= total:
        final = route(ValidateMaker(config=config).make(doc.name, store, model), "light", config.execution)
        jobs += [final, route(FinishMaker(config=config).make(doc.name, store, final.output["model_id"]), "light",
                              config.execution)]
    else:
        interval = doc.interval or config.check_interval
        jobs.append(iteration_flow(config, store, doc.state_id, model, doc.step, interval))
    return Flow(jobs, name=f"otf campaign {doc.name} (resumed at step {doc.step})")
