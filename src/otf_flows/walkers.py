"""Walkers: several trajectories of one campaign (``walkers:`` in the campaign YAML).

A walker is its own trajectory — starting structure, MD conditions, schedule, checks, guard and
rollback — and every walker shares the campaign's one training set and one model lineage
(DESIGN §2b). ``walkers:`` is a list of walkers, each a name and the keys of ``structure``,
``md`` and ``tolerances`` it changes, or a grid whose cartesian product makes the walkers::

    walkers:
      - {name: cold, md: {temperature_K: 1200}}
      - {name: hot, md: {temperature_K: 2400, seed: 3}}

    walkers: {grid: {md.temperature_K: [1500, 2000, 2500], md.pressure_GPa: [0, 5]}}   # 6 walkers, T1500-P0 ...

A campaign without ``walkers`` is one walker (``walker`` None in its documents), exactly as
before walkers existed. This module is a leaf of the configuration: it never imports the
campaign schema; :func:`walker_config` validates a walker's merged settings with the class of
the configuration it is given.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from otf_flows.yaml_config import Strict

WALKER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,49}$"
#: blocks of the campaign a walker may change
BLOCKS = ("structure", "md", "tolerances")
#: short names of grid keys in generated walker names (T1500-P0)
ABBREVIATIONS = {"md.temperature_K": "T", "md.pressure_GPa": "P", "md.seed": "seed", "md.total_steps": "n"}
_STRUCTURE_KINDS = ("file", "builder", "numbers")
#: validation context of one walker's settings: rules of the whole campaign (e.g. that some data is there for
#: the first fit) are checked on the campaign, not on each walker
WALKER_CONTEXT = {"walker": True}


class WalkerSpec(Strict):
    """One walker: its name and what it changes in the campaign's ``structure``, ``md``, ``tolerances`` and
    ``num_initial_steps``."""

    name: str = Field(pattern=WALKER_NAME, description="Walker name, unique in the campaign (letters, digits, "
                      ". _ -; at most 50 characters); names its states, checks and trajectory (`--walker NAME`).")
    structure: dict[str, Any] | str | None = Field(
        None, description="This walker's starting structure: a file name, a whole structure block ({file: ...}, "
        "{builder: bulk, ...}, {numbers: ...}) replacing the campaign's, or some keys of the campaign's block, "
        "e.g. {rattle_A: 0.1, seed: 2}; null: the campaign's structure.",
    )
    md: dict[str, Any] = Field(
        default_factory=dict, description="Keys of the campaign's md block this walker changes, e.g. "
        "{temperature_K: 2000, pressure_GPa: 5, ensemble: npt_berendsen, seed: 3, total_steps: 500}; the others "
        "are the campaign's.",
    )
    tolerances: dict[str, Any] = Field(
        default_factory=dict, description="Keys of the campaign's tolerances this walker changes, e.g. {fmax: 0.4}.",
    )
    num_initial_steps: int | None = Field(
        None, ge=0, description="Reference-driven MD steps of this walker before the first fit; null: the "
        "campaign's num_initial_steps. 0: the walker starts from the first model, fitted on the other walkers' "
        "initial labels (and refit.previous_data), and pays for no DFT MD of its own; its first checks teach the "
        "model its conditions.",
    )


class WalkerGrid(Strict):
    """Walkers as the cartesian product of values of some keys, one walker per combination."""

    grid: dict[str, list[Any]] = Field(
        description="Dotted key (md.<key>, tolerances.<key> or structure.<key>) -> list of values, e.g. "
        "{md.temperature_K: [1500, 2000, 2500], md.pressure_GPa: [0, 5]} makes 6 walkers named from the values "
        "in the order given: T1500-P0, T1500-P5, T2000-P0, ... (temperature T, pressure P, others by key name).",
    )

    @field_validator("grid")
    @classmethod
    def _keys(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not v:
            raise ValueError("give at least one key, e.g. {md.temperature_K: [1500, 2000]}")
        for key, values in v.items():
            block, _, field = key.partition(".")
            if block not in BLOCKS or not field or "." in field:
                raise ValueError(f"key {key!r} is not one of md.<key>, tolerances.<key>, structure.<key>")
            if not values:
                raise ValueError(f"{key}: give at least one value")
            seen = [repr(x) for x in values]
            dup = next((x for x in values if seen.count(repr(x)) > 1), None)
            if dup is not None:
                raise ValueError(f"{key}: value {dup!r} is listed twice")
        return v


Walkers = list[WalkerSpec] | WalkerGrid


def check_names(walkers: list[WalkerSpec]) -> list[WalkerSpec]:
    """``walkers`` (a list) with unique names; a ValueError names the first repeated one."""
    if not walkers:
        raise ValueError("give at least one walker (or leave walkers out: the campaign is one walker)")
    names = [w.name for w in walkers]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"walker name {dup!r} is used twice; names must be unique")
    return walkers


def _label(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def grid_name(combination: dict[str, Any]) -> str:
    """The generated name of one grid combination, e.g. ``T1500-P0``."""
    parts = []
    for key, value in combination.items():
        prefix = ABBREVIATIONS.get(key, key.partition(".")[2])
        parts.append(f"{prefix}{_label(value)}")
    return "-".join(parts)[:50]


def expand(walkers: Walkers | None) -> list[WalkerSpec]:
    """The walkers of a ``walkers:`` value, a grid expanded to its cartesian product ([] without walkers)."""
    if walkers is None:
        return []
    if isinstance(walkers, list):
        return list(walkers)
    keys = list(walkers.grid)
    specs = []
    for values in itertools.product(*(walkers.grid[k] for k in keys)):
        combination = dict(zip(keys, values))
        blocks: dict[str, dict[str, Any]] = {}
        for key, value in combination.items():
            block, _, field = key.partition(".")
            blocks.setdefault(block, {})[field] = value
        specs.append(WalkerSpec(name=grid_name(combination), **blocks))
    names = [s.name for s in specs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"two grid combinations are both named {dup!r}; use values that differ in their "
                         "first 50 characters")
    return specs


def track(campaign: str, walker: str | None) -> str:
    """The prefix of a walker's state, check and ledger ids: the campaign's name for a campaign without
    walkers (the ids it always had), ``<campaign>@<walker>`` otherwise."""
    return campaign if walker is None else f"{campaign}@{walker}"


def names(config) -> list[str]:
    """The walker names of a campaign configuration ([] for a campaign without walkers)."""
    return [w.name for w in expand(config.walkers)]


def walker_steps(walkers: Walkers | None, total_steps: int) -> dict[str, int]:
    """Walker name -> its ``md.total_steps`` ({} for a campaign without walkers), from the ``walkers`` block and
    the campaign's ``total_steps`` alone."""
    return {spec.name: int(spec.md.get("total_steps", total_steps)) for spec in expand(walkers)}


def walker_data(config, spec: WalkerSpec) -> dict[str, Any]:
    """The campaign mapping of walker ``spec``: the campaign's settings with the walker's changes, no walkers."""
    data = config.model_dump(mode="json", exclude={"walkers"})
    data["walkers"] = None
    if spec.structure is not None:
        structure = {"file": spec.structure} if isinstance(spec.structure, str) else dict(spec.structure)
        if not any(k in structure for k in _STRUCTURE_KINDS):  # some keys of the campaign's block
            structure = {**data["structure"], **structure}
        data["structure"] = structure
    data["md"] = {**data["md"], **spec.md}
    data["tolerances"] = {**data["tolerances"], **spec.tolerances}
    if spec.num_initial_steps is not None:
        data["num_initial_steps"] = spec.num_initial_steps
    return data


def walker_config(config, walker: str | None):
    """The settings of ``walker`` in campaign ``config`` (``config`` itself for None), validated with
    ``config``'s class; raises ValueError for an unknown walker name."""
    if walker is None:
        return config
    for spec in expand(config.walkers):
        if spec.name == walker:
            return type(config).model_validate(walker_data(config, spec), context=WALKER_CONTEXT)
    raise ValueError(f"walker {walker!r} is not in campaign {config.name!r} (walkers: {', '.join(names(config))})")


def walker_configs(config) -> dict:
    """Walker name -> its validated settings ({} for a campaign without walkers)."""
    return {spec.name: type(config).model_validate(walker_data(config, spec), context=WALKER_CONTEXT)
            for spec in expand(config.walkers)}


def resolve_structure_files(config, base: Path) -> list[str]:
    """Make the walkers' structure files absolute against ``base``; return one-line errors of those missing."""
    errors = []
    for spec in config.walkers if isinstance(config.walkers, list) else []:
        structure = spec.structure
        file = structure if isinstance(structure, str) else (structure or {}).get("file")
        if not isinstance(file, str):
            continue
        path = (base / file).resolve()
        if not path.is_file():
            errors.append(f"walkers: walker {spec.name!r}: structure.file: {file!r} does not exist (looked in {base})")
            continue
        spec.structure = str(path) if isinstance(structure, str) else {**structure, "file": str(path)}
    return errors

