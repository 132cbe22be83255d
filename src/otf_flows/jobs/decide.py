"""Compare + decide: errors of the model on the checked frame, the tolerance test, the next
interval, and the next iteration of the campaign emitted as a jobflow ``Response``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jobflow import Flow, Maker, Response, job

from otf_flows import progress
from otf_flows.campaign import CampaignConfig
from otf_flows.checks import error_metrics, passes
from otf_flows.errors import OtfError
from otf_flows.faults import failpoint
from otf_flows.lineage import claim, current_model
from otf_flows.md.guard import guard_limit
from otf_flows.jobs.base import job_settings, timed
from otf_flows.jobs.fit import RefitMaker
from otf_flows.jobs.hot_state import agrees, hot_state_message, stop_if_hot_again, verified_state
from otf_flows.jobs.md import MDSegmentMaker
from otf_flows.jobs.reference import ReferenceCheckMaker
from otf_flows.jobs.routing import route
from otf_flows.jobs.validate import ValidateMaker
from otf_flows.md.state import model_labels_of_check, state_id
from otf_flows.schedule import adapted_interval
from otf_flows.schemas.documents import CheckDoc
from otf_flows.walkers import names as walker_names
from otf_flows.walkers import track


def iteration_flow(config: CampaignConfig, store: str | None, state_id: str, model_id, step: int, interval: int,
                   walker: str | None = None, campaign_config: CampaignConfig | None = None) -> Flow:
    """One iteration: ML-MD segment → reference check → compare + decide, each Maker carrying ``config``.

    ``config`` is the trajectory's settings: the campaign's, or in a campaign with walkers ``walker``'s
    (:func:`otf_flows.walkers.walker_config`), with the campaign's in ``campaign_config`` for the
    refits, validation and end the decision may add. ``interval`` is the schedule's interval; the
    segment is cut at ``config.md.total_steps``. ``config.execution`` (the campaign's resources per
    job kind) routes each job.
    """
    campaign, execution = config.name, config.execution
    n_steps = min(interval, config.md.total_steps - step)
    at = f"{walker} " if walker else ""
    md = route(MDSegmentMaker(config=config, walker=walker).make(campaign, store, state_id, model_id, n_steps), "md",
               execution)
    md.name = f"ml-md {at}{step}->{step + n_steps}"
    check = route(ReferenceCheckMaker(config=config, walker=walker).make(campaign, store, md.output), "dft", execution)
    check.name = f"reference check {at}{step + n_steps}"
    decide = route(DecideMaker(config=config, walker=walker, campaign_config=campaign_config).make(
        campaign, store, md.output, check.output, interval, n_steps), "light", execution)
    decide.name = f"decide {at}{step + n_steps}"
    return Flow([md, check, decide], name=f"iteration {at}{step + n_steps}")


def _validate_now(settings, store, campaign: str) -> bool:
    """Whether the refit about to run should be validated (``validation.every``)."""
    if settings.every == "end":
        return False
    if settings.every == "refit":
        return True
    n_refits = len(store.models(campaign))  # the new model will be refit number n_refits
    return n_refits % settings.every == 0


def unphysical_reference(frame, guard) -> str | None:
    """Why the reference labels show the checked frame has already blown up (None if they do not)."""
    if not guard.enabled:
        return None
    fmax = max(abs(x) for row in frame.forces for x in row)
    if fmax > guard.max_force_eV_A:
        return f"reference force component {fmax:.1f} eV/Å (> {guard.max_force_eV_A}) at step {frame.md_step}"
    return None


def invalid_labels(frame, guard) -> str | None:
    """Why the reference labels themselves are unphysical (None if they are usable).

    Huge but finite forces of a frame that has blown up are physical labels (the model
    learns the repulsion from them); non-finite numbers, or forces beyond
    ``guard.max_label_force_eV_A``, are not.
    """
    values = np.array([frame.energy, *np.ravel(frame.forces), *np.ravel(frame.virial or [])], dtype=float)
    if not np.all(np.isfinite(values)):
        return f"reference labels hold non-finite numbers at step {frame.md_step}"
    fmax = float(np.max(np.abs(frame.forces)))
    if fmax > guard.max_label_force_eV_A:
        return (f"reference force component {fmax:.1f} eV/Å (> md.guard.max_label_force_eV_A "
                f"{guard.max_label_force_eV_A}) at step {frame.md_step}")
    return None


MAX_RERUNS = 3
"""Re-runs of one segment after failed checks (``rollback_on_fail``): after this many the campaign goes on from
the failed check's frame, as hybrid-md does, so tolerances the model cannot reach there cost DFT calls for a
few re-runs, not for ever."""


def reruns_of(store, campaign: str, start, walker: str | None = None) -> int:
    """How often failed checks (not guard trips) already rolled the trajectory back to state ``start``."""
    return store.collection("checks").count({"campaign": campaign, "kind": "check",
                                             "rolled_back_state_id": start.state_id})  # state ids name the walker


def rollback_target(store, campaign: str, start, guard, walker: str | None = None):
    """Where to continue after a guard trip: the segment's start, or further back if trips repeat there.

    Raises :class:`OtfError` when, with this trip, ``guard.max_consecutive_trips`` of the last
    ``guard.trip_window`` checks (default 2 × max_consecutive_trips) were guard trips, passed
    checks in between or not: the campaign stops (resumable) rather than loop.
    """
    recent = [c for c in store.checks(campaign) if c.walker == walker]  # this walker's trajectory
    window = guard.trip_window or 2 * guard.max_consecutive_trips
    latest = sorted(recent, key=lambda c: c.created_at)[max(len(recent) - (window - 1), 0):]
    trips = 1 + sum(1 for c in latest if c.kind == "guard")
    if trips >= guard.max_consecutive_trips:
        raise OtfError(
            f"{'walker ' + walker + ': ' if walker else ''}"
            f"blow-up guard tripped {trips} times in the last {min(len(latest) + 1, window)} checks (last from step "
            f"{start.step}); campaign stopped. "
            "Loosen md.guard, lower md.temperature_K or md.timestep_fs, or add training data, then --resume"
        )
    target = start
    repeats = sum(1 for c in recent if c.kind == "guard" and c.rolled_back_state_id == start.state_id)
    while repeats >= 1 and target.start_state_id is not None:
        target = store.get_state(target.start_state_id)
        repeats -= 1
    return target


def rerun_repeats(store, campaign: str, state, target, model_id: str, n_steps: int, walker: str | None = None) -> bool:
    """Whether the segment from ``target`` with ``model_id`` for ``n_steps`` would hand back ``state`` again.

    The ML-MD job returns the stored segment of the same start and model (the MD is
    deterministic): the one of the same length, else the one the guard (or the uncertainty
    trigger) stopped. Then the campaign would check the same frame with the same model and
    roll back to ``target`` again, forever.
    """
    if state.start_state_id != target.state_id or state.model_id != model_id:
        return False
    same_length = store.find_state(state_id(track(campaign, walker), target.step + n_steps, model_id))
    if same_length is not None and same_length.start_state_id == target.state_id:
        return same_length.state_id == state.state_id
    return bool(state.stopped_early or getattr(state, "uncertainty_stop", None))


def stop_if_rerun_repeats(store, campaign: str, doc, state, model_id: str, total_steps: int, can_update: bool,
                          walker: str | None = None, guard=None) -> None:
    """Stop the campaign (:class:`OtfError`, resumable) when the rollback of check ``doc`` would repeat it.

    That happens when the model cannot change (``can_update: false``, or its refit failed and
    the parent was kept, or a hot-state trip: no refit): the re-run from the rollback state uses
    the model that already tripped the guard (or failed the check) from that state. ``guard``
    (md.guard settings) words the message of a hot-state trip.
    """
    if doc.rolled_back_state_id is None:
        return
    target = store.get_state(doc.rolled_back_state_id)
    n_steps = min(doc.new_interval, total_steps - target.step)
    if n_steps < 1 or not rerun_repeats(store, campaign, state, target, model_id, n_steps, walker):
        return
    if doc.reference_agreed and guard is not None:
        raise OtfError(hot_state_message(doc, guard, walker))
    what = f"blow-up guard tripped ({doc.guard_reason})" if doc.kind == "guard" else f"check at step {doc.step} failed"
    why = (f"its refit failed: {doc.refit_error.splitlines()[0][:120]}" if doc.refit_error
           else "can_update is false" if not can_update else "no refit on this frame")
    raise OtfError(
        f"{'walker ' + walker + ': ' if walker else ''}"
        f"{what} with model {model_id}, and the re-run from step {target.step} would use the same model ({why}); "
        "campaign stopped. Loosen md.guard, lower md.temperature_K or md.timestep_fs, or add training data, "
        "then --resume"
    )


def new_labels(store, campaign: str, model_id: str, frame_id: str) -> int:
    """Training labels of the campaign (with ``frame_id`` about to join) that ``model_id`` has not seen."""
    seen = set(store.get_model(model_id).training_frame_ids)
    ids = {f.frame_id for f in store.training_frames(campaign)} | {frame_id}
    return len(ids - seen)


@dataclass
class FinishMaker(Maker):
    """Mark the campaign completed."""

    name: str = "finish campaign"
    config: CampaignConfig | None = None  # the campaign's settings, set when the flow is built

    @job
    def make(self, campaign: str, store: str | None, model_id: str):
        st, _ = job_settings(self.config, campaign, store)
        st.update_campaign(campaign, status="completed", model_id=model_id, message=None)
        progress.emit("finished", model_id=model_id)
        return {"model_id": model_id}


@dataclass
class DecideMaker(Maker):
    """Errors and tolerance test of a check, the next interval, refit or not, what runs next.

    Every checked frame joins the training data once its errors are measured (with
    ``refit.train_on: all``; ``failed``: only frames of failed checks that trigger a refit), so
    the errors stored on the check are out-of-sample: the model had not seen the frame. A
    segment stopped by the blow-up guard counts as a failed check of kind ``guard``: the
    model is refitted and the campaign rolls back to the segment's start with the shortest
    interval, unless the reference agrees with the model at the tripped frame (a hot state,
    :mod:`otf_flows.jobs.hot_state`): then no refit, a rollback to the last state a passed check
    verified, and a stop when the same limit trips again from there. Reference labels that are
    themselves unphysical flag the frame, which is never trained on. With ``rollback_on_fail`` a
    failed check rolls back to the segment's start.
    """

    name: str = "compare and decide"
    config: CampaignConfig | None = None  # the trajectory's settings (a walker's), set when the flow is built
    walker: str | None = None  # the walker whose check this is (None: a campaign without walkers)
    #: a walker's check: the campaign's settings, for its refits, validation and end (None: ``config``)
    campaign_config: CampaignConfig | None = None

    @job
    def make(self, campaign: str, store: str | None, segment: dict, check: dict, interval: int, n_steps: int):
        st, config = job_settings(self.config, campaign, store, self.walker)
        # the campaign's settings (a job built before Makers carried the walker's: its config, the campaign's)
        shared = self.campaign_config or self.config or config
        walker = self.walker
        state = st.get_state(segment["state_id"])
        check_id = f"{track(campaign, walker)}:check:{state.step}:{state.model_id}"
        doc = st.get_check(check_id)
        p = config.adaptive_method_parameters
        if doc is None:
            with timed(st, campaign, "other", self.name, f"{campaign}:decide:{check_id}", state.step):
                frame = st.get_frames([check["frame_id"]])[0]
                ml_energy, ml_forces, ml_virial = model_labels_of_check(state)
                errors = error_metrics(len(frame.numbers), ml_energy, frame.energy, ml_forces, frame.forces,
                                       ml_virial, frame.virial)
                unphysical = invalid_labels(frame, config.md.guard)
                guard = state.stopped_early or unphysical or unphysical_reference(frame, config.md.guard)
                tolerances = config.tolerances.model_dump()
                passed = passes(errors, tolerances) and guard is None
                # a trip the reference agrees with is the state's (hot), not the model's: no refit
                agreed = agrees(passes(errors, tolerances), tolerances) if guard and unphysical is None else None
                start = st.get_state(segment["start_state_id"])
                trigger = ("guard" if state.stopped_early else
                           "uncertainty" if state.uncertainty_stop else "interval")
                # an early end by the uncertainty trigger: the schedule goes on from the steps actually run
                base = max(state.step - start.step, 1) if trigger == "uncertainty" else interval
                if guard is not None:
                    new_interval = p.n_min if p else interval
                else:
                    new_interval = adapted_interval(base, passed, errors, config.tolerances.model_dump(), p)
                # unphysical labels teach the model nothing: no refit on them
                refit = (not passed) and config.can_update and unphysical is None and not agreed
                train = unphysical is None and (config.refit.train_on == "all" or refit)
                if passed and train and config.can_update and config.refit.every_new_labels:
                    refit = new_labels(st, campaign, state.model_id, frame.frame_id) >= config.refit.every_new_labels
                rollback = guard is not None or (config.rollback_on_fail and refit and not passed
                                                 and reruns_of(st, campaign, start, walker) < MAX_RERUNS)
                target = rollback_target(st, campaign, start, config.md.guard, walker) if guard else start
                if agreed:  # back to a state a passed check verified (a failed check may have kept a hot one)
                    target = verified_state(st, campaign, start, walker)
                doc = CheckDoc(
                    check_id=check_id, campaign=campaign, walker=walker, step=state.step,
                    interval=state.step - start.step,
                    passed=passed, new_interval=new_interval, refit=refit, model_id=state.model_id,
                    frame_id=frame.frame_id, reference_seconds=check.get("reference_seconds", 0.0),
                    kind="guard" if guard else "check", guard_reason=guard, guard_limit=guard_limit(guard),
                    reference_agreed=agreed,
                    rolled_back_to=target.step if rollback else None,
                    rolled_back_state_id=target.state_id if rollback else None, trigger=trigger,
                    uncertainty=(state.check_frame or {}).get("uncertainty", state.ml_uncertainty),
                    uncertainty_threshold=state.uncertainty_threshold,
                    frame_step=state.check_frame["step"] if state.check_frame else None,
                    trained_on=train, **errors,
                )
                # every label joins the training data after its errors were measured (refit.train_on);
                # unphysical labels are kept, flagged, and never trained on
                if unphysical is not None:
                    st.flag_frame(frame.frame_id, unphysical)
                elif train:
                    st.mark_training(frame.frame_id, campaign)
                st.put_check(doc)
                failpoint("decide.stored", walker)
        progress.emit("check", **doc.model_dump(mode="json", include={"step", "passed", "new_interval", "refit",
                                                                      "ediff", "fmax", "frmse", "kind",
                                                                      "trigger", "uncertainty", "walker"}))
        if doc.rolled_back_state_id is not None:
            resume_id = doc.rolled_back_state_id
            resume_step = doc.rolled_back_to
        else:
            resume_id, resume_step = state.state_id, state.step
        pending = check_id if doc.refit and doc.new_model_id is None and doc.refit_error is None else None
        total = config.md.total_steps
        if walker is None:
            st.update_campaign(campaign, step=resume_step, state_id=resume_id, interval=doc.new_interval,
                               pending_refit=pending)
        else:  # only this walker's document: walkers side by side never write the same one
            st.update_walker(campaign, walker, step=resume_step, state_id=resume_id, interval=doc.new_interval,
                             pending_refit=pending, status="running" if resume_step < total else "completed",
                             segment_start_state_id=None, segment_model_id=None)
        jobs = []
        next_model = doc.new_model_id or doc.model_id
        if pending:
            fit = route(
                RefitMaker(config=shared, walker=walker).make(campaign, store, parent_model_id=doc.model_id,
                                                              trigger_check_id=check_id),
                "fit", config.execution,
            )
            fit.name = f"refit after check {walker + ' ' if walker else ''}{state.step}"
            jobs.append(fit)
            next_model = fit.output["model_id"]
            if _validate_now(config.validation, st, campaign):
                validate = route(ValidateMaker(config=shared, walker=walker).make(campaign, store, next_model), "light",
                                 config.execution)
                validate.name = f"validate after check {walker + ' ' if walker else ''}{state.step}"
                jobs.append(validate)
                if config.validation.promotion is not None and config.validation.promotion.keep_parent:
                    next_model = validate.output["model_id"]
        if walker is not None and not pending:  # the walker's next segment takes the campaign's newest model
            gate = config.validation.promotion
            newest = current_model(st, campaign, keep_parent=gate is not None and gate.keep_parent)
            if newest is not None and newest.version > st.get_model(next_model).version:
                next_model = newest.model_id
        if not pending:  # a rollback that the same model would re-run stops the campaign instead of looping
            stop_if_hot_again(st, campaign, doc, config.md.guard, walker)
            stop_if_rerun_repeats(st, campaign, doc, state, next_model, config.md.total_steps, config.can_update,
                                  walker, config.md.guard)
        if resume_step < total:
            jobs.append(
                iteration_flow(config, store, resume_id, next_model, resume_step, doc.new_interval, walker,
                               campaign_config=None if walker is None else shared)
            )
        elif walker is None:
            jobs += final_jobs(shared, store, next_model)
        elif pending:  # the walker's last refit first: then maybe the campaign's end
            end = route(WalkerEndMaker(config=shared, walker=walker).make(campaign, store, next_model), "light",
                        config.execution)
            end.name = f"end of walker {walker}"
            jobs.append(end)
        elif last_walker(st, shared, walker):
            jobs += final_jobs(shared, store, next_model)
        output = doc.model_dump(mode="json", include={"step", "passed", "new_interval", "refit", "model_id"})
        if not jobs:  # a walker at its end while others still run: its chain ends here
            return output
        return Response(output=output, addition=Flow(jobs, name=f"after check {state.step}"))


def final_jobs(config: CampaignConfig, store: str, model_id) -> list:
    """Validation of the final model and the end of the campaign (``model_id`` may be an output reference)."""
    final = route(ValidateMaker(config=config).make(config.name, store, model_id), "light", config.execution)
    final.name = "validate final model"
    return [final, route(FinishMaker(config=config).make(config.name, store, final.output["model_id"]), "light",
                         config.execution)]


@dataclass
class WalkerEndMaker(Maker):
    """After the refit of a walker's last check: the campaign's end if every walker has finished."""

    name: str = "end of walker"
    config: CampaignConfig | None = None  # the campaign's settings, set when the flow is built
    walker: str | None = None

    @job
    def make(self, campaign: str, store: str, model_id: str):
        st, config = job_settings(self.config, campaign, store)
        if not last_walker(st, config, self.walker):
            return {"model_id": model_id, "last": False}
        gate = config.validation.promotion
        newest = current_model(st, campaign, keep_parent=gate is not None and gate.keep_parent)
        return Response(output={"model_id": newest.model_id, "last": True},
                        addition=Flow(final_jobs(config, store, newest.model_id), name=f"end of {campaign}"))


def last_walker(store, config: CampaignConfig, walker: str) -> bool:
    """Whether ``walker``, just completed, ends the campaign: every walker has completed with no refit pending,
    and this one is the first to claim the final validation (walkers finishing at once in different processes
    claim it once)."""
    done = {w.walker for w in store.walkers(config.name) if w.status == "completed" and w.pending_refit is None}
    if not all(name in done for name in walker_names(config)):
        return False
    return claim(store, config.name, "finish", walker)
