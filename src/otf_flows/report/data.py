"""What a campaign report shows, gathered from the store, and the paper's Table I (pure)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from otf_flows.schedule import per_1000_steps
from otf_flows.schemas.documents import CampaignDoc, CheckDoc, FrameDoc, ModelDoc
from otf_flows.trajectory import trajectory_frames as accepted_frames
from otf_flows.validation.evaluate import compare_model
from otf_flows.validation.metrics import Comparison
from otf_flows.validation.sets import validations_of

logger = logging.getLogger(__name__)

__all__ = ["DFT_SOURCES", "CampaignData", "collect", "performance_table", "trajectory_frames"]

#: Frame sources that cost one reference (DFT) calculation in the campaign.
DFT_SOURCES = ("initial_md", "check", "guard")


@dataclass
class CampaignData:
    """Everything the report draws, read once from the store.

    Attributes
    ----------
    comparison
        The latest model against every reference-labelled frame of the campaign.
    trained
        Per frame of ``comparison``: in the latest model's training set.
    trajectory
        ML-MD trajectory frames (from the segments' extxyz blobs), by MD step.
    """

    campaign: CampaignDoc
    checks: list[CheckDoc]
    models: list[ModelDoc]
    frames: list[FrameDoc]
    time_split: dict[str, float]
    latest_model_id: str | None
    comparison: Comparison | None = None
    trained: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    trajectory: list = field(default_factory=list)
    validations: list[dict] = field(default_factory=list)

    @property
    def config(self) -> dict:
        return self.campaign.config

    @property
    def n_dft_calls(self) -> int:
        return sum(f.source in DFT_SOURCES for f in self.frames)


def trajectory_frames(store, campaign: str) -> list:
    """ML-MD frames of the campaign's accepted trajectory (rolled-back segments left out), by step."""
    return [a for a in accepted_frames(store, campaign) if a.info.get("driver") == "model"]


def collect(store, campaign: str, calculator=None) -> CampaignData:
    """Read a campaign's checks, models, frames, timings and trajectory; evaluate its latest model.

    ``calculator`` replaces the latest model (tests); by default the stored GAP is loaded.
    """
    doc = store.require_campaign(campaign)
    models = store.models(campaign)
    latest = doc.model_id or (models[-1].model_id if models else None)
    data = CampaignData(
        campaign=doc, checks=store.checks(campaign), models=models, frames=store.frames_of(campaign),
        time_split=store.time_split(campaign), latest_model_id=latest,
    )
    if latest is not None and data.frames:
        trained_ids = set(store.get_model(latest).training_frame_ids)
        data.comparison = compare_model(store, latest, data.frames, calculator)
        data.trained = np.array([f.frame_id in trained_ids for f in data.frames], dtype=bool)
    data.trajectory = trajectory_frames(store, campaign)
    data.validations = [v for m in models for v in validations_of(store, m.model_id)]
    return data


def performance_table(wall_seconds: float, time_split: dict[str, float], dft_calls: int, md_steps: int,
                      fits: int) -> dict:
    """The paper's Table I for one campaign.

    Parameters
    ----------
    wall_seconds
        Total wall time of the campaign (s).
    time_split
        Seconds per kind: ``reference``, ``fit``, ``ml_md`` (others are ignored: "other" is
        whatever the three do not account for, scheduling and bookkeeping included).
    dft_calls
        Reference calculations (initial MD steps and checks).
    md_steps
        MD steps reached.
    fits
        Model fits (``gap_fit`` runs).

    Returns
    -------
    dict
        Shares of wall time (fractions), counts, ``mean_reference_seconds`` per call,
        ``aimd_steps_same_time`` = wall / mean reference time and
        ``speedup`` = md_steps × mean reference time / wall (None where undefined).
    """
    ref, fit, md = (float(time_split.get(k, 0.0)) for k in ("reference", "fit", "ml_md"))
    other = max(wall_seconds - ref - fit - md, 0.0)

    def share(x):
        return x / wall_seconds if wall_seconds > 0 else None

    mean_ref = ref / dft_calls if dft_calls else None
    return {
        "wall_seconds": wall_seconds,
        "reference_share": share(ref),
        "fit_share": share(fit),
        "ml_md_share": share(md),
        "other_share": share(other),
        "dft_calls": dft_calls,
        "fits": fits,
        "md_steps": md_steps,
        "md_steps_per_dft_call": md_steps / dft_calls if dft_calls else None,
        "dft_calls_per_1000_steps": per_1000_steps(dft_calls, md_steps),
        "mean_reference_seconds": mean_ref,
        "aimd_steps_same_time": wall_seconds / mean_ref if mean_ref else None,
        "speedup": md_steps * mean_ref / wall_seconds if mean_ref and wall_seconds > 0 else None,
    }
