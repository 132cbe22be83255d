"""What every campaign job shares: opening the store, its settings, timing (and :func:`model_dir`, re-exported)."""

from __future__ import annotations

import time
from contextlib import contextmanager

from jobflow import CURRENT_JOB

from otf_flows.campaign import CampaignConfig
from otf_flows.errors import StoreError
from otf_flows.ml.registry import model_dir
from otf_flows.schemas.documents import LedgerEntry, now
from otf_flows.store import OtfStore
from otf_flows.walkers import walker_config

__all__ = ["forget_stores", "job_settings", "model_dir", "open_campaign", "open_store", "timed"]

_open_stores: dict[str, OtfStore] = {}


def open_store(store: str | None) -> OtfStore:
    """The store at location ``store``, cached per process; None: the store the job runs in, as jobflow's own
    jobs use it (``CURRENT_JOB.store``: ``OtfStore(...).jobstore`` or, in FireWorks, ``OtfJobStore``)."""
    if store is None:
        store = getattr(CURRENT_JOB.store, "otf_location", None)
        if store is None:
            raise StoreError("store: the job runs on a JobStore that is not an otf store and was given no store "
                             "location; run the flow with store=OtfStore(LOCATION).jobstore, or give the Maker "
                             "store=LOCATION")
    if store not in _open_stores:
        _open_stores[store] = OtfStore(store)
    return _open_stores[store]


def open_campaign(campaign: str, store: str | None) -> tuple[OtfStore, CampaignConfig]:
    """The store (cached per process) and the campaign's validated configuration read from it."""
    otf_store = open_store(store)
    doc = otf_store.require_campaign(campaign)
    return otf_store, CampaignConfig.model_validate(doc.config)


def job_settings(config: CampaignConfig | None, campaign: str, store: str | None,
                 walker: str | None = None) -> tuple[OtfStore, CampaignConfig]:
    """The store and a job's settings: its Maker's ``config``, set when the flow was built (a walker's
    trajectory job carries that walker's settings).

    Only a job serialised before Makers carried their settings (``config`` None, e.g. a firework
    of an older workflow still in a LaunchPad) reads them from the store by campaign name; such a
    job of ``walker``, or one serialised before Makers carried the walker's settings (the
    campaign's, with its ``walkers``), gets the walker's settings from the campaign's here.
    """
    st, config = open_campaign(campaign, store) if config is None else (open_store(store), config)
    if walker is not None and config.walkers is not None:
        config = walker_config(config, walker)
    return st, config


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
