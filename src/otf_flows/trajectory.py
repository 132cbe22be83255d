"""A campaign's MD trajectory from the stored segments: which segments were kept, and their frames.

Each MD segment stores its end state (collection ``states``) with the segment's start
(``start_state_id``) and an extxyz blob of the frames kept every ``md.trajectory_interval``
steps, labelled by whatever drove the MD: the model (ML-MD) or the reference (initial MD).
The campaign's ``state_id`` is where it stands now; walking back from it through
``start_state_id`` gives the accepted trajectory. A stored segment off that chain was
abandoned by a rollback (a guard trip, or ``rollback_on_fail``), or has not been checked yet
(a run stopped between a segment and its check).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

from ase import Atoms

from otf_flows.walkers import track

__all__ = ["Segment", "campaign_segments", "segment_frames", "trajectory_frames"]

SegmentStatus = Literal["accepted", "rolled_back", "pending"]
_STATE_FIELDS = ["state_id", "start_state_id", "step", "model_id", "trajectory", "stopped_early", "created_at",
                 "walker"]


@dataclass(frozen=True)
class Segment:
    """One stored MD segment.

    Attributes
    ----------
    state_id
        The state the segment ended in.
    start_step, step
        MD steps of its start and of its end.
    model_id
        The model that drove it; None for the initial reference-driven MD.
    status
        ``accepted`` (on the campaign's trajectory), ``rolled_back`` (abandoned by a rollback)
        or ``pending`` (not yet checked).
    trajectory
        Blob key of its extxyz frames; None when it kept none.
    """

    state_id: str
    start_step: int
    step: int
    model_id: str | None
    status: SegmentStatus
    trajectory: str | None
    stopped_early: str | None = None
    created_at: str = ""
    walker: str | None = None

    @property
    def driver(self) -> str:
        return "reference" if self.model_id is None else "model"


def campaign_segments(store, campaign: str, walker: str | None = None) -> list[Segment]:
    """Every stored segment of ``campaign`` (of one ``walker``; None: of each walker, walker by walker) with
    its status, by end step (accepted first on a tie)."""
    doc = store.require_campaign(campaign)
    walkers = store.walkers(campaign)
    if walker is None and walkers:
        return [seg for w in walkers for seg in campaign_segments(store, campaign, w.walker)]
    pointer = store.get_walker(campaign, walker) if walker is not None else doc
    states = {d["state_id"]: d for d in store.collection("states").query({"campaign": campaign},
                                                                           properties=_STATE_FIELDS)
              if d.get("walker") == walker}
    accepted: set[str] = set()
    sid = pointer.state_id if pointer is not None else None
    while sid is not None and sid in states and sid not in accepted:
        accepted.add(sid)
        sid = states[sid].get("start_state_id")
    checked = {c["check_id"] for c in store.collection("checks").query({"campaign": campaign},
                                                                        properties=["check_id"])}
    segments = []
    for d in states.values():
        start = d.get("start_state_id")
        if start is None and d.get("model_id") is None and not d.get("trajectory"):
            continue  # the starting state (no initial MD), not a segment
        if d["state_id"] in accepted:
            status = "accepted"
        elif d.get("model_id") is not None and f"{track(campaign, walker)}:check:{d['step']}:{d['model_id']}" \
                not in checked:
            status = "pending"
        else:
            status = "rolled_back"
        start_step = states[start]["step"] if start in states else 0
        segments.append(Segment(
            state_id=d["state_id"], start_step=start_step, step=d["step"], model_id=d.get("model_id"),
            status=status, trajectory=d.get("trajectory"), stopped_early=d.get("stopped_early"),
            created_at=str(d.get("created_at", "")), walker=walker,
        ))
    return sorted(segments, key=lambda s: (s.step, s.status != "accepted", s.created_at))


def segment_frames(store, segments: list[Segment]) -> list[Atoms]:
    """The frames of ``segments`` in MD-step order, each labelled with its driver's energy and forces.

    ``info`` of each frame: ``md_step``, ``segment_start_step``, ``driver`` (``model`` or
    ``reference``), ``model_id`` (ML-MD frames only), ``rolled_back`` and ``segment_status``.
    The calculator results ``energy`` (eV) and ``forces`` (eV/Å) are those of the driver.
    """
    from ase.io import read

    keyed = []
    for order, seg in enumerate(segments):
        if not seg.trajectory:
            continue
        text = store.get_blob(seg.trajectory).decode()
        for atoms in read(io.StringIO(text), index=":", format="extxyz"):
            atoms.info.pop("model_id", None)
            atoms.info.update(segment_start_step=seg.start_step, driver=seg.driver,
                              rolled_back=seg.status == "rolled_back", segment_status=seg.status)
            if seg.model_id is not None:
                atoms.info["model_id"] = seg.model_id
            if seg.walker is not None:
                atoms.info["walker"] = seg.walker
            keyed.append(((seg.walker or "", int(atoms.info["md_step"]), order), atoms))
    return [atoms for _, atoms in sorted(keyed, key=lambda item: item[0])]


def trajectory_frames(store, campaign: str, include_rolled_back: bool = False,
                      walker: str | None = None) -> list[Atoms]:
    """The campaign's MD frames (reference-driven initial MD, then ML-MD) in MD-step order.

    Parameters
    ----------
    store
        An :class:`otf_flows.store.OtfStore`.
    campaign
        Campaign name (:class:`otf_flows.errors.NotFoundError` if absent).
    include_rolled_back
        Also the frames of segments off the accepted trajectory (``info['rolled_back']`` True,
        or ``segment_status`` ``pending`` for a segment not yet checked). By default every
        MD step appears at most once.
    """
    segments = campaign_segments(store, campaign, walker)
    if not include_rolled_back:
        segments = [s for s in segments if s.status == "accepted"]
    return segment_frames(store, segments)
