"""The graph of a campaign with walkers: each walker's initial data, one first fit, one chain per walker.

::

    initial MD (walker 1) ─┐
    initial MD (walker 2) ─┼─ first fit (all labels) ── start walkers ─┬─ walker 1: md → check → decide → ...
    initial MD (walker 3) ─┘                                           ├─ walker 2: ...
                                                                       └─ walker 3: ...

The chains are independent flows added by the "start walkers" job (``Response.addition``), so
FireWorks runs them on different workers and ``otf run`` with ``execution.local.workers`` > 1 in
different processes (:func:`otf_flows.managers.local.run_flow`). They meet only in the store: every
label joins the campaign's training set, refits take the campaign's lease
(:mod:`otf_flows.lineage`), and each segment starts with the campaign's newest model. Each
chain is built from its walker's progress document when the job runs, so a resumed campaign
continues every walker where it stopped; the last walker to finish validates the final model.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobflow import Flow, Maker, Response, job

from otf_flows.campaign import CampaignConfig
from otf_flows.lineage import current_model, lease_id
from otf_flows.jobs.base import job_settings
from otf_flows.jobs.decide import WalkerEndMaker, final_jobs, iteration_flow
from otf_flows.jobs.fit import RefitMaker
from otf_flows.jobs.reference import InitialMDMaker
from otf_flows.jobs.routing import route
from otf_flows.walkers import names as walker_names
from otf_flows.walkers import walker_config, walker_configs, walker_steps


def walkers_flow(config: CampaignConfig, store: str, after=None) -> Flow:
    """A campaign with walkers from scratch: every walker's initial data, the first fit on all of it
    (unless ``model.initial_model``), then the job that starts the walkers' chains."""
    campaign, execution = config.name, config.execution
    initials = []
    for name, settings in walker_configs(config).items():
        initial = route(InitialMDMaker(config=settings, walker=name).make(campaign, store, after=after), "dft",
                        execution)
        initial.name = f"initial reference MD {name}"
        initials.append(initial)
    jobs = list(initials)
    ready = [i.output["state_id"] for i in initials]
    if config.model.initial_model is None:
        fit = route(RefitMaker(config=config).make(campaign, store, after=ready), "fit", execution)
        fit.name = "first fit"
        jobs.append(fit)
        ready = fit.output["model_id"]
    jobs.append(route(StartWalkersMaker(config=config).make(campaign, store, after=ready), "light", execution))
    return Flow(jobs, name=f"otf campaign {campaign}")


def resume_walkers_flow(config: CampaignConfig, st, store: str) -> Flow:
    """Continue a campaign with walkers: from scratch while a walker has no progress document or there is no
    model yet (those jobs find what they stored), else every walker from its document."""
    docs = {w.walker: w for w in st.walkers(config.name)}
    if any(name not in docs for name in walker_names(config)) or current_model(st, config.name) is None:
        return walkers_flow(config, store)
    start = route(StartWalkersMaker(config=config).make(config.name, store), "light", config.execution)
    return Flow([start], name=f"otf campaign {config.name} (resumed)")


def walker_chain(config: CampaignConfig, st, store: str, name: str, end: bool = True) -> Flow | None:
    """The rest of walker ``name``'s chain from its progress document: its pending refit, then its next
    iteration, or for a walker at its end (with ``end``) the job that ends the campaign if it is the last
    (None when it has completed with nothing pending)."""
    doc = st.get_walker(config.name, name)
    settings = walker_config(config, name)  # the walker's trajectory jobs carry its settings
    total = settings.md.total_steps
    gate = config.validation.promotion
    model = current_model(st, config.name, keep_parent=gate is not None and gate.keep_parent)
    jobs = []
    model_id = model.model_id if model is not None else config.model.initial_model
    if doc.pending_refit is not None:
        check = st.get_check(doc.pending_refit)
        fit = route(RefitMaker(config=config, walker=name).make(
            config.name, store, parent_model_id=check.model_id if check else None, trigger_check_id=doc.pending_refit),
            "fit", config.execution)
        fit.name = f"refit after check {name} {check.step if check else ''}".rstrip()
        jobs.append(fit)
        model_id = fit.output["model_id"]
    elif doc.segment_start_state_id == doc.state_id and doc.segment_model_id is not None:
        # the segment was under way when the run stopped: it re-runs with the model it started with, so that
        # a check label it already stored is found again (not a second DFT call and a label without its check)
        model_id = doc.segment_model_id
    if doc.step < total:
        jobs.append(iteration_flow(settings, store, doc.state_id, model_id, doc.step,
                                   doc.interval or settings.check_interval, name, campaign_config=config))
    elif jobs and end:  # the refit of the walker's last check, then maybe the campaign's end
        jobs.append(route(WalkerEndMaker(config=config, walker=name).make(config.name, store, model_id), "light",
                          config.execution))
    return Flow(jobs, name=f"walker {name}") if jobs else None


@dataclass
class StartWalkersMaker(Maker):
    """Add one independent chain per walker, each from its progress document (or, when every walker has
    completed, the final validation): ``otf run`` may run the chains in worker processes."""

    name: str = "start walkers"
    config: CampaignConfig | None = None  # the campaign's settings, set when the flow is built
    #: the flows this job adds are independent chains (:func:`otf_flows.managers.local.run_flow`)
    independent_chains = True

    @job
    def make(self, campaign: str, store: str, after=None):
        st, config = job_settings(self.config, campaign, store)
        for name, total in walker_steps(config.walkers, config.md.total_steps).items():
            doc = st.get_walker(campaign, name)  # a resume may give the walkers more steps (md.total_steps)
            status = "running" if doc.step < total else "completed"
            if (doc.status, doc.total_steps) != (status, total):
                st.update_walker(campaign, name, status=status, total_steps=total)
        running = [w.walker for w in st.walkers(campaign) if w.status != "completed"]
        if running:  # the last walker to finish claims the final validation anew
            st.collection("locks").remove_docs({"lock_id": lease_id(campaign, "finish")})
        chains = [chain for name in walker_names(config)
                  if (chain := walker_chain(config, st, store, name, end=bool(running)))]
        output = {"walkers": walker_names(config), "running": running}
        if running:
            return Response(output=output, addition=Flow(chains, name=f"walkers of {campaign}"))
        gate = config.validation.promotion
        model = current_model(st, campaign, keep_parent=gate is not None and gate.keep_parent)
        model_id = chains[-1].jobs[-1].output["model_id"] if chains else model.model_id
        jobs = [*chains, *final_jobs(config, store, model_id)]  # pending refits of completed walkers, then the end
        return Response(output=output, addition=Flow(jobs, name=f"end of {campaign}"))
