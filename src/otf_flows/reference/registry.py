"""Reference engines by name: the one list of what ``reference.engine`` may be.

Each name maps to the schema of its ``reference`` block and to the import path of its engine class,
which is imported only when an engine is asked for (as ASE's ``calculators/names.py`` does): reading a
campaign never imports atomate2 or custodian. Adding an engine means adding a line here, its settings
model (with an ``engine`` literal and a ``level_of_theory`` static method) and its engine class (with
``from_settings``, ``label`` and ``check_available``, see :class:`~otf_flows.reference.base.ReferenceEngine`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, NamedTuple, Union

from pydantic import Field

from otf_flows.errors import ConfigError
from otf_flows.reference.base import ReferenceEngine
from otf_flows.reference.cp2k.settings import Cp2kReference
from otf_flows.reference.settings import AseReference
from otf_flows.reference.vasp.settings import VaspReference

__all__ = ["ENGINES", "ReferenceSettings", "engine_class", "get_engine", "level_of_theory"]


class Engine(NamedTuple):
    """One reference engine: the schema of its ``reference`` block and the import path of its class."""

    settings: type
    engine: str


ENGINES: dict[str, Engine] = {
    "ase": Engine(AseReference, "otf_flows.reference.ase.AseEngine"),
    "cp2k": Engine(Cp2kReference, "otf_flows.reference.cp2k.engine.Cp2kEngine"),
    "vasp": Engine(VaspReference, "otf_flows.reference.vasp.engine.VaspEngine"),
}
"""``reference.engine`` name -> its settings and engine."""

ReferenceSettings = Annotated[Union[tuple(e.settings for e in ENGINES.values())],  # noqa: UP007
                              Field(discriminator="engine")]
"""The ``reference`` block: one schema per engine, told apart by ``engine``."""


def names() -> str:
    """``ase, cp2k, vasp``: the engine names, for messages."""
    return ", ".join(ENGINES)


def engine_class(name: str) -> type:
    """The engine class called ``name``, imported now."""
    entry = ENGINES.get(name)
    if entry is None:
        raise ConfigError(f"reference.engine: {name!r} is not one of {names()}")
    module, _, cls = entry.engine.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def get_engine(settings, omp_threads: int | None = None, cache_dir: Path | None = None) -> ReferenceEngine:
    """The engine for a validated ``reference`` block of a campaign.

    ``omp_threads`` (the campaign's ``execution.dft.omp_threads``) sets ``OMP_NUM_THREADS`` of
    the DFT program, before the engine's own setting (CP2K's ``reference.omp_threads``).
    ``cache_dir`` is where an engine keeps data it generates once (CP2K: pymatgen's data
    directory); None: :func:`otf_flows.dirs.cache_dir`.
    """
    return engine_class(settings.engine).from_settings(settings, omp_threads=omp_threads, cache_dir=cache_dir)


def level_of_theory(reference: dict) -> str | None:
    """A short label of the physics of labels made with stored ``reference`` settings (None: no engine)."""
    entry = ENGINES.get(reference.get("engine"))
    if entry is None:
        return None
    parts = entry.settings.level_of_theory(reference)
    return " ".join(str(p) for p in (reference["engine"], *parts) if p)
