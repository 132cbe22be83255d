"""Where validation frames come from and where results go: the only store access of validation.

Collections (DESIGN §5): ``benchmarks`` holds ``{name, frame_ids: [...]}`` with the frames in
``frames``; ``validations`` holds one document per model × benchmark, key ``validation_id``
= ``"<model_id>:<benchmark>"``. The benchmark name ``checks`` is reserved: the DFT check
frames of the model's own campaign that the model was not trained on.
"""

from __future__ import annotations

from otf_flows.errors import InputError, NotFoundError
from otf_flows.schemas.documents import FrameDoc, ModelDoc

__all__ = [
    "CHECKS",
    "benchmark_frames",
    "benchmark_names",
    "common_untrained_frames",
    "frames_for",
    "get_validation",
    "save_validation",
    "untrained_check_frames",
    "validation_id",
    "validations_of",
]

#: Benchmark name meaning "the campaign's check frames the model was not trained on".
CHECKS = "checks"


def _clean(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("_id", "last_updated")}


def benchmark_names(store) -> list[str]:
    """Names of the registered benchmark sets, sorted."""
    return sorted(store.collection("benchmarks").distinct("name"))


def benchmark_frames(store, name: str) -> list[FrameDoc]:
    """The frames of the benchmark set ``name``, in the set's order."""
    doc = store.collection("benchmarks").query_one({"name": name})
    if doc is None:
        names = ", ".join([CHECKS, *benchmark_names(store)])
        raise NotFoundError(f"benchmark {name!r} is not in {store.describe()} (benchmarks: {names})")
    return store.get_frames(list(doc["frame_ids"]))


def untrained_check_frames(store, model: ModelDoc) -> list[FrameDoc]:
    """DFT check frames of the model's campaign that are not in its training set, by MD step."""
    if model.campaign is None:
        raise InputError(f"model {model.model_id!r} belongs to no campaign; --benchmark {CHECKS} needs a campaign model")
    trained = set(model.training_frame_ids)
    return [f for f in store.frames_of(model.campaign)
            if f.source == "check" and f.frame_id not in trained and not f.flags]


def frames_for(store, model: ModelDoc, benchmark: str) -> list[FrameDoc]:
    """Frames to validate ``model`` on: a benchmark set, or its untrained check frames for ``checks``."""
    frames = untrained_check_frames(store, model) if benchmark == CHECKS else benchmark_frames(store, benchmark)
    if not frames:
        what = "check frames it was not trained on" if benchmark == CHECKS else "frames"
        raise InputError(f"benchmark {benchmark!r} has no {what} for model {model.model_id!r}")
    return frames


def common_untrained_frames(store, model: ModelDoc, other: ModelDoc, benchmark: str) -> list[FrameDoc]:
    """Frames of ``benchmark`` that neither ``model`` nor ``other`` was trained on.

    Comparing a refitted model with its parent is fair only on such frames: for ``checks``
    they are the checks that followed both fits, for a benchmark set its frames minus any
    that reached a training set (e.g. through ``previous_data``).
    """
    trained = set(model.training_frame_ids) | set(other.training_frame_ids)
    if benchmark == CHECKS:
        if model.campaign is None:
            return []
        frames = [f for f in store.frames_of(model.campaign) if f.source == "check"]
    else:
        frames = benchmark_frames(store, benchmark)
    return [f for f in frames if f.frame_id not in trained and not f.flags]


def validation_id(model_id: str, benchmark: str) -> str:
    return f"{model_id}:{benchmark}"


def save_validation(store, doc: dict) -> None:
    """Insert or replace a validation document (needs ``validation_id``)."""
    store.collection("validations").update(doc, key="validation_id")


def get_validation(store, model_id: str, benchmark: str) -> dict | None:
    doc = store.collection("validations").query_one({"validation_id": validation_id(model_id, benchmark)})
    return _clean(doc) if doc else None


def validations_of(store, model_id: str) -> list[dict]:
    """Every stored validation of a model, by benchmark name."""
    docs = store.collection("validations").query({"model_id": model_id})
    return sorted((_clean(d) for d in docs), key=lambda d: d["benchmark"])
