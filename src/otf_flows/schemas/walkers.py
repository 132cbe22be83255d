"""The store document of one walker's progress (a campaign with ``walkers:``; DESIGN §2b)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from otf_flows.schemas.documents import _Doc, now


class WalkerDoc(_Doc):
    """Progress pointer of one walker: where its next segment starts, its schedule, its state.

    Only the walker's own jobs write it (one chain per walker), so walkers running side by side
    never write the same document; the campaign's document keeps what they share.
    """

    walker_id: str = Field(description="'<campaign>:walker:<walker>'.")
    campaign: str = Field(description="Campaign the walker belongs to.")
    walker: str = Field(description="Walker name (walkers: in the campaign YAML).")
    status: Literal["running", "completed"] = Field("running", description="completed: the walker reached its "
                                                    "md.total_steps.")
    step: int = Field(0, description="Last MD step reached by an accepted state of this walker.")
    total_steps: int = Field(description="The walker's md.total_steps.")
    state_id: str | None = Field(None, description="State the walker's next segment starts from.")
    interval: int | None = Field(None, description="The walker's next checking interval (MD steps).")
    pending_refit: str | None = Field(None, description="Check id of this walker whose refit has not finished.")
    segment_start_state_id: str | None = Field(None, description="Start state of the segment the walker runs now "
                                               "(with segment_model_id: the model chosen for it when it started).")
    segment_model_id: str | None = Field(None, description="The campaign's newest model when the segment from "
                                         "segment_start_state_id started; a rerun of that segment uses it again.")
    updated_at: datetime = Field(default_factory=now, description="Last change (UTC).")
