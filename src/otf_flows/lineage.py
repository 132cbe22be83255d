"""The campaign's one model lineage shared by its walkers: the refit lease and the current model.

Walkers run side by side (worker processes of ``otf run``, FireWorks workers), and each may ask
for a refit. No two refits of one campaign run at once: a refit job takes the campaign's lease —
a document in the store's ``locks`` collection written with an atomic compare-and-set
(:meth:`~otf_flows.store.OtfStore.put_if`) — and a refit asked for meanwhile waits for it. Once it
holds the lease, a waiting refit whose trigger label is already in the newest model (fitted by
the refit it waited for, on every label stored by then) fits nothing more: the requests that
arrived during one fit become one more fit after it. A lease carries its owner (host, process)
and an expiry renewed while the fit runs, so the lease of a killed process is taken over: at
once on the same host (the process is gone), else when it expires.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager

from otf_flows.schemas.documents import ModelDoc

logger = logging.getLogger(__name__)

LEASE_TTL_S = 300.0
"""Seconds a refit lease lasts unless renewed (the holder renews it every third of this)."""
POLL_S = 0.25
"""Seconds between two attempts to take a lease held by another process."""


def lease_id(campaign: str, what: str = "refit") -> str:
    return f"{campaign}:{what}"


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free(doc: dict | None, now: float) -> bool:
    """Whether lease ``doc`` may be taken: released, expired, or held by a process of this host that is gone
    (or by this very process, left from an attempt that died with its job)."""
    if doc is None or doc.get("pid") is None:
        return True
    if doc["expires_at"] < now:
        return True
    if doc.get("host") == socket.gethostname():
        return doc["pid"] == os.getpid() or not _alive(doc["pid"])
    return False


def try_acquire(store, campaign: str, what: str = "refit", ttl_s: float = LEASE_TTL_S,
                holder: str | None = None) -> bool:
    """Take the campaign's lease ``what`` if it is free (atomically) for ``holder`` (e.g. the walker whose
    refit it is; for the record); whether this process holds it now."""
    key = lease_id(campaign, what)
    current = store.collection("locks").query_one({"lock_id": key})
    now = time.time()
    if not _free(current, now):
        return False
    doc = {"lock_id": key, "campaign": campaign, "what": what, **_owner(), "holder": holder, "acquired_at": now,
           "expires_at": now + ttl_s}
    expected = None if current is None else {"pid": current.get("pid"), "host": current.get("host"),
                                             "expires_at": current.get("expires_at")}
    return store.put_if("locks", doc, expected)


def release(store, campaign: str, what: str = "refit") -> None:
    """Give the lease back (if this process still holds it)."""
    key = lease_id(campaign, what)
    mine = _owner()
    store.put_if("locks", {"lock_id": key, "campaign": campaign, "what": what, "host": None, "pid": None,
                           "expires_at": 0.0}, {"pid": mine["pid"], "host": mine["host"]})


def renew(store, campaign: str, what: str = "refit", ttl_s: float = LEASE_TTL_S) -> bool:
    """Extend the lease this process holds; False if it is no longer ours."""
    key = lease_id(campaign, what)
    mine = _owner()
    current = store.collection("locks").query_one({"lock_id": key}) or {}
    doc = {k: v for k, v in current.items() if k not in ("_id", "last_updated")}
    doc.update(lock_id=key, campaign=campaign, what=what, **mine, expires_at=time.time() + ttl_s)
    return store.put_if("locks", doc, {"pid": mine["pid"], "host": mine["host"]})


@contextmanager
def lease(store, campaign: str, what: str = "refit", ttl_s: float = LEASE_TTL_S, poll_s: float = POLL_S,
          holder: str | None = None):
    """Hold the campaign's lease ``what`` for the block: wait until it is free, renew it while the block runs."""
    waited = 0.0
    while not try_acquire(store, campaign, what, ttl_s, holder):
        if waited == 0.0:
            logger.info("campaign %s: waiting for the running %s to finish", campaign, what)
        time.sleep(poll_s)
        waited += poll_s
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(ttl_s / 3):
            if not renew(store, campaign, what, ttl_s):
                logger.warning("campaign %s: the %s lease was taken over", campaign, what)
                return

    beat = threading.Thread(target=heartbeat, name=f"{what}-lease", daemon=True)
    beat.start()
    try:
        yield waited
    finally:
        done.set()
        beat.join()
        release(store, campaign, what)


def current_model(store, campaign: str, keep_parent: bool = False) -> ModelDoc | None:
    """The model a walker's next segment uses: the campaign's newest version, or with a promotion gate
    that keeps parents (``keep_parent``), the newest that the gate did not flag (None: no model yet)."""
    models = sorted(store.models(campaign), key=lambda m: m.version)
    if not models:
        return None
    model = models[-1]
    if keep_parent:
        by_id = {m.model_id: m for m in models}
        while model.flags and model.parent_model_id in by_id:
            model = by_id[model.parent_model_id]
    return model


def claim(store, campaign: str, what: str, owner: str) -> bool:
    """Claim a once-per-campaign task (e.g. the final validation after the last walker) for ``owner``;
    True for the first owner, and again for the same owner (a rerun after a kill), False for any other."""
    key = lease_id(campaign, what)
    doc = {"lock_id": key, "campaign": campaign, "what": what, "owner": owner, "claimed_at": time.time()}
    if store.put_if("locks", doc, None):
        return True
    current = store.collection("locks").query_one({"lock_id": key})
    return current is not None and current.get("owner") == owner
