"""What every campaign job shares: opening the store, its settings, timing."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from otf_flows.backends.ml import get_backend
from otf_flows.campaign import CampaignConfig
from otf_flows.dirs import cache_dir
from otf_flows.schemas.documents import LedgerEntry, now
from otf_flows.store import OtfStore

_open_stores: dict[str, OtfStore] = {}


def open_store(store: str) -> OtfStore:
    """The store at location ``store``, cached per process."""
    if store not in _open_stores:
        _open_stores[store] = OtfStore(store)
    return _open_stores[store]


def open_campaign(campaign: str, store: str) -> tuple[OtfStore, CampaignConfig]:
    """The store (cached per process) and the campaign's validated configuration read from it."""
    otf_store = open_store(store)
    doc = otf_store.require_campaign(campaign)
    return otf_store, CampaignConfig.model_validate(doc.config)


def job_settings(config: CampaignConfig | None, campaign: str, store: str) -> tuple[OtfStore, CampaignConfig]:
    """The store and a job's settings: its Maker's ``config``, set when the flow was built.

    Only a job serialised before Makers carried their settings (``config`` None, e.g. a firework
    of an older workflow still in a LaunchPad) reads them from the store by campaign name.
    """
    if config is None:
        return open_campaign(campaign, store)
    return open_store(store), config


def forget_stores() -> None:
    """Close cached stores (end of a local run, tests)."""
    for store in _open_stores.values():
        store.close()
    _open_stores.clear()


@contextmanager
def timed(store: OtfStore, campaign: str, kind: str, job: str, entry_id: str, step: int | None = None,
          walker: str | None = None):
    """Record the wall time, start and end of the block in the ledger under ``entry_id`` (idempotent)."""
    started_at = now()
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    store.record_time(LedgerEntry(campaign=campaign, kind=kind, seconds=seconds, job=job, step=step, walker=walker,
                                  started_at=started_at), entry_id)


def model_dir(store: OtfStore, model_id: str, cache: str | Path | None = None) -> Path:
    """Local directory with the model's files (extracted from the store once).

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
