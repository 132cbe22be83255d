"""A guard trip that the reference agrees with: a hot state, not a bad model.

When the blow-up guard stops an ML-MD segment and the reference labels of the tripped frame
agree with the model within the campaign's tolerances (:func:`otf_flows.checks.passes`), the
model did nothing wrong: the trajectory itself went past the guard's limit (a reaction that
releases heat, a limit too tight for the system). Then no refit follows the trip, the walker
rolls back to the last state that a passed check verified (:func:`verified_state`) rather than
only to the segment's start (a failed check before may have kept a state its bad model had
heated), and if the trajectory trips the same limit again from there the campaign stops,
resumably, naming the limit to loosen (:func:`stop_if_hot_again`).
"""

from __future__ import annotations

from otf_flows.errors import OtfError
from otf_flows.md.guard import loosen_advice
from otf_flows.walkers import track

__all__ = ["agrees", "hot_state_message", "repeated_hot_trip", "stop_if_hot_again", "verified_state"]


def agrees(passed_tolerances: bool, tolerances: dict) -> bool | None:
    """Whether a tripped frame's errors say the reference agreed with the model: every set tolerance
    held (``passed_tolerances``). None when no tolerance is set: there is nothing to agree on, and the
    trip is handled as a bad model's."""
    if all(v is None for v in tolerances.values()):
        return None
    return bool(passed_tolerances)


def verified_state(store, campaign: str, start, walker: str | None = None):
    """The last state of the trajectory up to ``start`` (included) that a passed check verified.

    Walks back through ``start_state_id`` (the accepted trajectory) to the first state whose check
    passed; the end of the reference-driven initial MD, or the starting structure, counts as
    verified (reference forces drove it).
    """
    state = start
    while state.model_id is not None and state.start_state_id is not None:
        check = store.get_check(f"{track(campaign, walker)}:check:{state.step}:{state.model_id}")
        if check is not None and check.passed:
            return state
        state = store.get_state(state.start_state_id)
    return state


def _on_trajectory_to(store, state, state_ids: set[str], down_to_step: int) -> str | None:
    """The first of ``state_ids`` met walking back from ``state`` (itself included) to step ``down_to_step``."""
    while state is not None and state.step >= down_to_step:
        if state.state_id in state_ids:
            return state.state_id
        state = store.get_state(state.start_state_id) if state.start_state_id else None
    return None


def repeated_hot_trip(store, campaign: str, doc, walker: str | None = None):
    """An earlier hot-state trip (``reference_agreed``) of the walker that tripped the same guard limit as
    check ``doc`` and rolled back to the state ``doc`` rolls back to, or to one before it on the same
    trajectory (None if there is none): the trajectory went hot again from a state a passed check verified."""
    earlier = [c for c in store.checks(campaign)
               if c.walker == walker and c.check_id != doc.check_id and c.kind == "guard" and c.reference_agreed
               and c.guard_limit == doc.guard_limit and c.rolled_back_state_id is not None
               and c.created_at < doc.created_at]
    if not earlier:
        return None
    target = store.get_state(doc.rolled_back_state_id)
    by_target = {c.rolled_back_state_id: c for c in sorted(earlier, key=lambda c: c.created_at)}  # latest wins
    found = _on_trajectory_to(store, target, set(by_target), min(c.rolled_back_to for c in earlier))
    return by_target.get(found)


def hot_state_message(doc, guard, walker: str | None = None, earlier=None) -> str:
    """The one-line stop message of hot-state trip ``doc`` (md.guard settings ``guard``): tripped again after
    ``earlier``'s rollback, or (``earlier`` None) about to trip again on a re-run with the same model."""
    errors = ", ".join(f"{k} {getattr(doc, k):.3g}" for k in ("ediff", "fmax") if getattr(doc, k) is not None)
    again = (f"again after the rollback from step {earlier.step}" if earlier is not None
             else "and the re-run with the same model would trip it again")
    who = f"walker {walker}: " if walker else ""
    advice = loosen_advice(doc.guard_limit, guard)
    return (
        f"{who}blow-up guard tripped ({doc.guard_reason}) {again}, although the reference agreed with the model "
        f"within the tolerances ({errors}): the state is hot, not the model bad; campaign stopped at step "
        f"{doc.rolled_back_to}, the last state the reference verified. "
        f"{advice[:1].upper()}{advice[1:]}, or lower md.temperature_K or md.timestep_fs, "
        "then --resume"
    )


def stop_if_hot_again(store, campaign: str, doc, guard, walker: str | None = None) -> None:
    """Stop the campaign (:class:`OtfError`, resumable from the rollback state) when hot-state trip ``doc``
    repeats an earlier one (:func:`repeated_hot_trip`)."""
    if doc.kind != "guard" or not doc.reference_agreed or doc.rolled_back_state_id is None:
        return
    earlier = repeated_hot_trip(store, campaign, doc, walker)
    if earlier is not None:
        raise OtfError(hot_state_message(doc, guard, walker, earlier))
