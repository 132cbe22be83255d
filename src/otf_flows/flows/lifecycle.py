"""The campaign's lifecycle, the same under every manager: registration, input checks, resume rules.

:func:`prepare_campaign` checks the inputs, registers a new campaign (or applies the resume rules to
a stored one) and returns the flow to run; ``otf run`` (:mod:`otf_flows.managers.local`),
``otf submit`` (:mod:`otf_flows.managers.fireworks`, allocation mode) and the Maker's registration
job (:mod:`otf_flows.flows.maker`) all call it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from jobflow import Flow
from pydantic import ValidationError

from otf_flows.campaign import CampaignConfig, store_reference
from otf_flows.data import frames_from_xyz
from otf_flows.errors import ConfigError, InputError
from otf_flows.flows.graph import campaign_flow, resume_flow
from otf_flows.yaml_config import error_line
from otf_flows.mongo import redact
from otf_flows.reference.registry import get_engine
from otf_flows.reference.settings import RUN_KEYS, SCF_PATH_KEYS, SCF_PATH_UPDATES
from otf_flows.schemas.documents import CampaignDoc
from otf_flows.store import OtfStore
from otf_flows.structures import build_structure
from otf_flows.walkers import walker_configs, walker_steps

logger = logging.getLogger(__name__)

__all__ = ["IGNORED_KEYS", "RESUMABLE_KEYS", "prepare_campaign", "resume_changes", "resumed_config",
           "stored_config",
           "validate_inputs"]


def prepare_campaign(config: CampaignConfig, store: OtfStore, resume: bool = False,
                     check_engine: bool = False) -> Flow:
    """Register (or find, with ``resume``) the campaign and return the flow to run.

    With ``check_engine`` the reference engine must be runnable here (``otf run``, ``otf submit
    --check-engine``); otherwise the first DFT job checks it where it runs, so a login node
    without the DFT program can submit.

    Raises :class:`InputError` when the campaign exists and ``resume`` is not set, or is
    missing with ``resume`` set, or when ``resume`` changes a setting outside
    :data:`RESUMABLE_KEYS`; nothing is written then. Accepted changes are stored (the jobs
    read the new settings from the resumed step on) and recorded in ``CampaignDoc.changes``.
    """
    if not resume:
        validate_inputs(config)
    if check_engine:
        get_engine(config.reference).check_available()
    existing = store.get_campaign(config.name)
    location = store.location if store.kind != "embedded" else str(store.path)
    if existing is not None and not resume:
        raise InputError(
            f"name: campaign {config.name!r} already exists in {store.describe()}; "
            "use --resume to continue it or choose another name"
        )
    if existing is None and resume:
        raise InputError(f"--resume: campaign {config.name!r} is not in {store.describe()}; run without --resume")
    if existing is None:
        for item in config.refit.previous_data:
            kind, name = store_reference(item) or (None, None)
            if kind == "campaign" and not Path(item).exists() and not store.training_frames(name):
                raise InputError(f"refit.previous_data: campaign {name!r} has no training frames in {store.describe()}")
            if kind == "model" and not Path(item).exists():
                store.get_model(name)
        if config.model.initial_model is not None:
            store.get_model(config.model.initial_model)
        doc = CampaignDoc(
            name=config.name,
            config=stored_config(config),
            total_steps=total_steps(config),
            status="running",
        )
        store.put_campaign(doc)
        return campaign_flow(config, location)
    stored = CampaignConfig.model_validate(existing.config)
    config = resumed_config(stored, config)
    changed = resume_changes(stored, config)
    fields = {}
    if changed:
        record = {"step": existing.step, "at": datetime.now(tz=UTC).isoformat(), "changed": changed}
        fields = {
            "config": stored_config(config), "total_steps": total_steps(config),
            "interval": _resumed_interval(existing.interval, stored, config), "changes": [*existing.changes, record],
        }
        for key, (old, new) in changed.items():
            logger.info("campaign %s resumes at step %d with %s: %r -> %r", config.name, existing.step, key, old, new)
    existing = store.update_campaign(config.name, status="running", message=None, **fields)
    return resume_flow(existing, location)


def resumed_config(stored: CampaignConfig, config: CampaignConfig) -> CampaignConfig:
    """The settings a campaign resumes with: the keys the YAML gives, and for every other key the stored value,
    not today's default (a campaign resumes with the settings it started with, whatever a later version's
    defaults). ``execution`` (the resources of this run) and ``store`` come from the YAML as they are.

    Raises :class:`ConfigError` (one line) if the two do not make a valid campaign.
    """
    given = config.model_dump(mode="json", exclude_unset=True)
    given["execution"] = config.execution.model_dump(mode="json")
    given["store"] = config.store
    merged = _overlay(stored.model_dump(mode="json"), given)
    try:
        return CampaignConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(f"--resume: the YAML with the stored settings of campaign {config.name!r}: "
                          f"{error_line(err)}") from None


_TAGS = ("engine", "backend", "builder", "file", "numbers")
"""Keys that say which kind a block is (reference engine, model backend, structure): another kind replaces
the stored block whole."""


def _overlay(stored, given):
    """``stored`` with ``given`` laid over it, mapping by mapping (lists and other kinds of block replace)."""
    if not (isinstance(stored, dict) and isinstance(given, dict)):
        return given
    if any(tag in given and stored.get(tag) != given[tag] for tag in _TAGS):
        return given
    return {**stored, **{key: _overlay(stored.get(key), value) for key, value in given.items()}}


RESUMABLE_KEYS = frozenset({
    "compat", "can_update", "tolerances", "check_interval", "adaptive_method_parameters", "rollback_on_fail",
    "uncertainty", "validation", "execution", "md.total_steps", "md.trajectory_interval", "md.guard",
    "model.num_threads", "refit.train_on", "refit.every_new_labels", "refit.virials",
    *(f"reference.{key}" for key in RUN_KEYS | SCF_PATH_KEYS),
    *(f"reference.input_updates.{key}" for key in SCF_PATH_UPDATES),
})
"""Keys (top-level or dotted, with everything below them) that ``--resume`` may change: among them
everything about resources (``execution``, threads, the DFT run command, retries) and the SCF's
mixing and iteration limit, none of which is in the labels' hash."""

IGNORED_KEYS = frozenset({"store"})
"""Keys never compared on resume (``--store`` / ``OTF_STORE`` override them)."""


class _Absent:
    """A key one of two compared configurations lacks (e.g. another structure or reference kind)."""

    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def resume_changes(stored: CampaignConfig, config: CampaignConfig) -> dict[str, list]:
    """The settings ``config`` changes in ``stored``, as ``{dotted_key: [stored, new]}``.

    Raises :class:`InputError` naming the first changed key (in the YAML's field order) that
    is not under :data:`RESUMABLE_KEYS`, with its stored and new values.
    """
    changed: dict[str, list] = {}
    for key, old, new in _diff(stored.model_dump(mode="json"), config.model_dump(mode="json")):
        if _under(key, IGNORED_KEYS):
            continue
        if not _under(key, RESUMABLE_KEYS):
            raise InputError(
                f"--resume: {key} of campaign {config.name!r} cannot change on resume "
                f"(stored {old!r}, new {new!r}); keys that may change: {', '.join(sorted(RESUMABLE_KEYS))}"
            )
        changed[key] = [None if old is _ABSENT else old, None if new is _ABSENT else new]
    return changed


def _diff(old, new, prefix: str = ""):
    """(dotted key, old, new) of every difference; mappings are compared key by key."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(k for k in old if k not in new)]:
            yield from _diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.")
    elif old != new:
        yield prefix.rstrip("."), old, new


def _under(key: str, keys: frozenset[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))


def _resumed_interval(interval: int | None, stored: CampaignConfig, config: CampaignConfig) -> int | None:
    """The next checking interval under the new schedule: a changed ``check_interval`` restarts the
    schedule from it, a changed adaptive range clamps the current interval into it."""
    schedule = ("check_interval", "adaptive_method_parameters")
    if interval is None or all(getattr(stored, k) == getattr(config, k) for k in schedule):
        return interval
    p = config.adaptive_method_parameters
    if config.check_interval != stored.check_interval or p is None:
        return config.check_interval
    return min(max(interval, p.n_min), p.n_max)


def validate_inputs(config: CampaignConfig) -> None:
    """Read the structure and every previous_data file now, so bad input fails before anything is stored."""
    build_structure(config.structure)
    walkers = walker_configs(config) if config.walkers else {}  # each walker's settings, once
    for name, walker in walkers.items():
        try:
            build_structure(walker.structure)
        except InputError as err:
            raise type(err)(f"walkers: walker {name!r}: {err}") from None
    refit = config.refit
    for item in refit.previous_data:
        if store_reference(item) and not Path(item).exists():
            continue
        frames_from_xyz(item, energy_key=refit.energy_key, forces_key=refit.forces_key, virial_key=refit.virial_key)


def total_steps(config: CampaignConfig) -> int:
    """MD steps of the campaign: of its one trajectory, or the sum over its walkers."""
    return sum(walker_steps(config.walkers, config.md.total_steps).values()) or config.md.total_steps


def stored_config(config: CampaignConfig) -> dict:
    """The configuration as stored: a MongoDB URI in ``store:`` loses its credentials."""
    data = config.model_dump(mode="json")
    if data.get("store"):
        data["store"] = redact(data["store"])
    return data
