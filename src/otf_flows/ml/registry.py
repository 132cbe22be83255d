"""ML backends by name: the one list of what ``model.backend`` may be, and where a stored model's files go.

Each name maps to the schema of its ``model`` block and to the import path of its backend class, which
is imported only when a backend is asked for (as ASE's ``calculators/names.py`` does): reading a campaign
never imports quippy or torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, NamedTuple, Union

from pydantic import Field

from otf_flows.dirs import cache_dir
from otf_flows.errors import ConfigError
from otf_flows.ml.base import MLBackend
from otf_flows.ml.gap.settings import GapModel
from otf_flows.ml.mace.settings import MaceModel

__all__ = ["BACKENDS", "GapModel", "MaceModel", "ModelSettings", "get_backend", "model_dir"]


class Backend(NamedTuple):
    """One ML backend: the schema of its ``model`` block and the import path of its class."""

    settings: type
    backend: str


BACKENDS: dict[str, Backend] = {
    "gap": Backend(GapModel, "otf_flows.ml.gap.backend.GapBackend"),
    "mace": Backend(MaceModel, "otf_flows.ml.mace.backend.MaceBackend"),
}
"""``model.backend`` name -> its settings and backend."""

ModelSettings = Annotated[Union[tuple(b.settings for b in BACKENDS.values())],  # noqa: UP007
                          Field(discriminator="backend")]
"""The ``model`` block: one schema per ML backend, told apart by ``backend``."""


def names() -> str:
    """``gap, mace``: the backend names, for messages."""
    return ", ".join(BACKENDS)


def get_backend(name: str) -> MLBackend:
    """The backend called ``name`` (``model.backend``; ``ModelDoc.backend`` of a stored model)."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise ConfigError(f"model.backend: {name!r} is not one of {names()}")
    module, _, cls = entry.backend.rpartition(".")
    return getattr(importlib.import_module(module), cls)()


def model_dir(store, model_id: str, cache: str | Path | None = None) -> Path:
    """Local directory with the files of the stored model ``model_id`` (extracted from ``store`` once).

    A store directory keeps them under ``<store>/models``; for a MongoDB store they go to the
    cache (:func:`otf_flows.dirs.cache_dir` of ``cache``, the campaign's ``execution.cache_dir``).
    """
    model = store.get_model(model_id)
    backend = get_backend(model.backend)
    if store.kind == "embedded":
        dest = store.path / "models" / model_id
    else:
        dest = cache_dir(cache) / "models" / model.artifact[:16]
    if not (dest / backend.model_file).exists():  # archives are immutable: extracted once, then reused
        dest.parent.mkdir(parents=True, exist_ok=True)
        backend.unpack(store.get_blob(model.artifact), dest)
    return dest
