"""The campaign store: jobflow's JobStore plus our collections and a blob store.

Location (``--store``, ``OTF_STORE``, the YAML's ``store:``, else ``./otf-store``):

- a directory: embedded, :class:`~otf_flows.embedded.EmbeddedStore` (maggma stores on one
  indexed SQLite file, ``db/otf.sqlite3``) plus content-addressed files;
- ``mongodb://`` / ``mongodb+srv://``: maggma ``MongoStore`` and ``GridFSStore``;
- ``memory://NAME``: maggma ``MemoryStore`` (mongomock), the MongoDB code path for tests.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from maggma.stores import MemoryStore

from otf_flows.embedded import EmbeddedStore
from otf_flows.errors import InputError, NotFoundError, StoreError
from otf_flows.mongo import get_blob, mongo_store, put_blob, redact, remember
from otf_flows.schemas.documents import (
    CampaignDoc,
    CheckDoc,
    FrameDoc,
    LedgerEntry,
    ModelDoc,
    StateDoc,
    now,
)
from otf_flows.schemas.walkers import WalkerDoc
from otf_flows.settings import otf_settings

logger = logging.getLogger(__name__)

DEFAULT_LOCATION = "./otf-store"
COLLECTIONS = {
    "campaigns": "name",
    "frames": "frame_id",
    "checks": "check_id",
    "models": "model_id",
    "states": "state_id",
    "ledger": "entry_id",
    "benchmarks": "name",
    "validations": "validation_id",
    "allocations": "allocation_id",
    "walkers": "walker_id",
    "locks": "lock_id",
}

#: fields users query, indexed on MongoDB (the embedded store indexes every top-level field)
INDEXES = {
    "frames": ("frame_id", "campaign", "training_in", "md_step", "source"),
    "checks": ("check_id", "campaign", "step"),
    "models": ("model_id", "campaign", "parent_model_id", "trigger_check_id"),
    "states": ("state_id", "campaign"),
    "ledger": ("entry_id", "campaign"),
    "benchmarks": ("name",),
    "validations": ("validation_id", "model_id", "benchmark"),
    "campaigns": ("name",),
    "allocations": ("allocation_id", "campaign"),
    "walkers": ("walker_id", "campaign"),
    "locks": ("lock_id",),
}


def resolve_location(cli: str | None = None, config: str | None = None) -> str:
    """``--store`` beats ``OTF_STORE`` beats the YAML's ``store:`` beats ``./otf-store``."""
    return cli or otf_settings().store or config or DEFAULT_LOCATION


def _is_mongo(location: str) -> bool:
    return location.startswith(("mongodb://", "mongodb+srv://"))


class OtfStore:
    """All persistent data of otf_flows.

    Parameters
    ----------
    location
        A directory, a MongoDB URI or ``memory://NAME``.
    """

    _memory: dict[str, dict[str, Any]] = {}

    def __init__(self, location: str):
        self.location = location
        self._stores: dict[str, Any] = {}
        self._jobstore = None
        if _is_mongo(location):
            self.kind = "mongo"
            self.location = location = remember(location)
        elif location.startswith("memory://"):
            self.kind = "memory"
        else:
            self.kind = "embedded"
            self.path = Path(location).expanduser().resolve()

    # ----------------------------------------------------------------- backends
    def make_store(self, collection: str):
        """An unconnected maggma store for one collection on this backend."""
        key = COLLECTIONS.get(collection, "task_id")
        if self.kind == "embedded":
            return EmbeddedStore(collection, database_path=str(self.path / "db"), key=key)
        if self.kind == "memory":
            return MemoryStore(collection_name=f"{self.location}/{collection}", key=key)

        return mongo_store(self.location, collection, key)

    def collection(self, name: str):
        """A connected maggma store for one collection."""
        if name not in self._stores:
            if self.kind == "memory":
                shared = OtfStore._memory.setdefault(self.location, {})
                if name not in shared:
                    shared[name] = self.make_store(name)
                    shared[name].connect()
                self._stores[name] = shared[name]
            else:
                if self.kind == "embedded":
                    (self.path / "db").mkdir(parents=True, exist_ok=True)
                store = self.make_store(name)
                try:
                    store.connect()
                    if self.kind == "mongo":
                        store._collection.database.client.admin.command("ping")
                        for field in INDEXES.get(name, ()):
                            store.ensure_index(field)
                except Exception as err:  # noqa: BLE001 - any backend failure
                    first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                    raise StoreError(f"store: cannot open {self.describe()}: {first}") from None
                self._stores[name] = store
        return self._stores[name]

    def put_if(self, collection: str, doc: dict, expected: dict | None) -> bool:
        """Write ``doc`` (replacing the document of its key) only if the stored one matches ``expected``,
        atomically; ``expected`` None: only if there is none. Returns whether it was written.

        The compare-and-set under the refit lease and the walkers' finish claim: on the embedded store
        one SQLite write transaction, on MongoDB a conditional replace (and an insert on a unique key).
        """
        key = COLLECTIONS[collection]
        store = self.collection(collection)
        if self.kind == "embedded":
            return store.put_if(doc, expected)
        coll = store._collection
        if expected is None:
            from pymongo.errors import DuplicateKeyError

            coll.create_index(key, unique=True)
            try:
                coll.insert_one(dict(doc))
            except DuplicateKeyError:
                return False
            return True
        return coll.replace_one({**expected, key: doc[key]}, dict(doc)).matched_count == 1

    def describe(self) -> str:
        """Location without credentials."""
        if self.kind == "mongo":
            return redact(self.location)
        return str(getattr(self, "path", self.location))

    @property
    def jobstore(self):
        """jobflow JobStore (job outputs) on the same backend, with a ``data`` additional store."""
        if self._jobstore is None:
            from jobflow import JobStore

            self._jobstore = JobStore(self.collection("jobs"), additional_stores={"data": self.collection("jobs_data")})
            self._jobstore.otf_location = str(self.path) if self.kind == "embedded" else self.location
        return self._jobstore

    # ----------------------------------------------------------------- blobs
    def put_blob(self, data: bytes) -> str:
        """Store bytes once; return their content key."""
        key = hashlib.sha256(data).hexdigest()
        if self.kind == "embedded":
            path = self.path / "blobs" / key[:2] / key
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{key}.{os.getpid()}.tmp")  # one per writer: same-key writers never mix
                tmp.write_bytes(data)
                os.replace(tmp, path)
            return key

        put_blob(self, key, data)
        return key

    def get_blob(self, key: str) -> bytes:
        """Bytes stored under ``key``."""
        if self.kind == "embedded":
            path = self.path / "blobs" / key[:2] / key
            if not path.exists():
                raise StoreError(f"store: blob {key} is missing from {path.parent}")
            return path.read_bytes()

        return get_blob(self, key)

    # ----------------------------------------------------------------- campaigns
    def get_campaign(self, name: str) -> CampaignDoc | None:
        doc = self.collection("campaigns").query_one({"name": name})
        return CampaignDoc.model_validate(_clean(doc)) if doc else None

    def require_campaign(self, name: str) -> CampaignDoc:
        doc = self.get_campaign(name)
        if doc is None:
            names = ", ".join(c["name"] for c in self.collection("campaigns").query({}, properties=["name"])) or "none"
            raise NotFoundError(f"campaign {name!r} is not in {self.describe()} (campaigns: {names})")
        return doc

    def put_campaign(self, doc: CampaignDoc) -> None:
        doc.updated_at = now()
        self.collection("campaigns").update(doc.model_dump(mode="json"), key="name")

    def update_campaign(self, name: str, **fields) -> CampaignDoc:
        doc = self.require_campaign(name)
        doc = doc.model_copy(update=fields)
        self.put_campaign(doc)
        return doc

    def campaigns(self) -> list[CampaignDoc]:
        return [CampaignDoc.model_validate(_clean(d)) for d in self.collection("campaigns").query({})]

    # ----------------------------------------------------------------- walkers
    def get_walker(self, campaign: str, walker: str) -> WalkerDoc | None:
        doc = self.collection("walkers").query_one({"walker_id": f"{campaign}:walker:{walker}"})
        return WalkerDoc.model_validate(_clean(doc)) if doc else None

    def update_walker(self, campaign: str, walker: str, **fields) -> WalkerDoc:
        """Change (or create, with ``total_steps``) the progress document of one walker; only its own jobs do."""
        doc = self.get_walker(campaign, walker)
        if doc is None:
            doc = WalkerDoc(walker_id=f"{campaign}:walker:{walker}", campaign=campaign, walker=walker, **fields)
        else:
            doc = doc.model_copy(update=fields)
        doc.updated_at = now()
        self.collection("walkers").update(doc.model_dump(mode="json"), key="walker_id")
        return doc

    def campaign_step(self, doc: CampaignDoc) -> int:
        """MD steps the campaign has reached: its step, or the sum of its walkers' steps."""
        walkers = self.walkers(doc.name)
        return sum(w.step for w in walkers) if walkers else doc.step

    def walkers(self, campaign: str) -> list[WalkerDoc]:
        """Progress documents of a campaign's walkers ([] for a campaign without walkers), by name."""
        docs = self.collection("walkers").query({"campaign": campaign})
        return sorted((WalkerDoc.model_validate(_clean(d)) for d in docs), key=lambda w: w.walker)

    # ----------------------------------------------------------------- frames
    def add_frame(self, frame: FrameDoc, training_in: str | None = None) -> tuple[str, bool]:
        """Insert a frame unless an identical one exists; optionally mark it as training data.

        Returns the frame id and whether a new document was written.
        """
        frames = self.collection("frames")
        existing = frames.query_one({"frame_id": frame.frame_id}, properties=["frame_id", "training_in"])
        if existing is None:
            if training_in and training_in not in frame.training_in:
                frame.training_in.append(training_in)
            frames.update(frame.model_dump(mode="json"), key="frame_id")
            return frame.frame_id, True
        if training_in and training_in not in existing.get("training_in", []):
            doc = frames.query_one({"frame_id": frame.frame_id})
            doc["training_in"] = [*doc.get("training_in", []), training_in]
            frames.update(_clean(doc), key="frame_id")
        return frame.frame_id, False

    def mark_training(self, frame_id: str, campaign: str) -> None:
        """Add the frame to the campaign's training data."""
        self._add_to_list(frame_id, "training_in", campaign)

    def flag_frame(self, frame_id: str, reason: str) -> None:
        """Record why a frame's labels are suspect; flagged frames are never trained on."""
        self._add_to_list(frame_id, "flags", reason)

    def _add_to_list(self, frame_id: str, field: str, value: str) -> None:
        frames = self.collection("frames")
        doc = frames.query_one({"frame_id": frame_id})
        if doc is None:
            raise NotFoundError(f"frame {frame_id} is not in the store")
        if value not in doc.get(field, []):
            doc[field] = [*doc.get(field, []), value]
            frames.update(_clean(doc), key="frame_id")

    def get_frames(self, frame_ids: list[str]) -> list[FrameDoc]:
        docs = {d["frame_id"]: d for d in self.collection("frames").query({"frame_id": {"$in": list(frame_ids)}})}
        missing = [f for f in frame_ids if f not in docs]
        if missing:
            raise StoreError(f"store: {len(missing)} frames are missing, e.g. {missing[0]}")
        return [FrameDoc.model_validate(_clean(docs[f])) for f in frame_ids]

    def training_frames(self, campaign: str) -> list[FrameDoc]:
        """Training frames of a campaign, oldest first (flagged frames never count)."""
        docs = self.collection("frames").query({"training_in": campaign})
        frames = [FrameDoc.model_validate(_clean(d)) for d in docs]
        frames = [f for f in frames if not f.flags]
        return sorted(frames, key=lambda f: (f.created_at, f.md_step or -1))

    def frames_of(self, campaign: str) -> list[FrameDoc]:
        """Every frame a campaign produced (training or check), by MD step."""
        docs = self.collection("frames").query({"campaign": campaign})
        return sorted((FrameDoc.model_validate(_clean(d)) for d in docs), key=lambda f: (f.md_step or 0, f.created_at))

    def dft_calls(self, campaign: str) -> dict[str | None, int]:
        """Reference (DFT) labels the campaign made, per walker (None: a campaign without walkers): its
        initial-MD frames and the frames of its checks, guard checks and checks of rolled-back segments
        included; imported frames are not counted. Reads only two fields per frame."""
        docs = self.collection("frames").query({"campaign": campaign}, properties=["walker", "source"])
        return dict(Counter(d.get("walker") for d in docs if d.get("source") != "import"))

    # ----------------------------------------------------------------- checks
    def get_check(self, check_id: str) -> CheckDoc | None:
        doc = self.collection("checks").query_one({"check_id": check_id})
        return CheckDoc.model_validate(_clean(doc)) if doc else None

    def put_check(self, check: CheckDoc) -> None:
        self.collection("checks").update(check.model_dump(mode="json"), key="check_id")

    def checks(self, campaign: str) -> list[CheckDoc]:
        docs = self.collection("checks").query({"campaign": campaign})
        return sorted((CheckDoc.model_validate(_clean(d)) for d in docs), key=lambda c: c.step)

    # ----------------------------------------------------------------- models
    def get_model(self, model_id: str) -> ModelDoc:
        doc = self.collection("models").query_one({"model_id": model_id})
        if doc is None:
            raise NotFoundError(f"model {model_id!r} is not in {self.describe()}")
        return ModelDoc.model_validate(_clean(doc))

    def find_model(self, criteria: dict) -> ModelDoc | None:
        doc = self.collection("models").query_one(criteria)
        return ModelDoc.model_validate(_clean(doc)) if doc else None

    def put_model(self, model: ModelDoc) -> None:
        self.collection("models").update(model.model_dump(mode="json"), key="model_id")

    def models(self, campaign: str | None = None) -> list[ModelDoc]:
        criteria = {"campaign": campaign} if campaign else {}
        docs = self.collection("models").query(criteria)
        return sorted((ModelDoc.model_validate(_clean(d)) for d in docs), key=lambda m: (m.created_at, m.version))

    def lineage(self, model_id: str) -> list[ModelDoc]:
        """The model and its ancestors, newest first."""
        chain, seen = [], set()
        current: str | None = model_id
        while current is not None and current not in seen:
            seen.add(current)
            model = self.get_model(current)
            chain.append(model)
            current = model.parent_model_id
        return chain

    def frames_of_model(self, model_id: str) -> list[FrameDoc]:
        """Which frames trained model ``model_id``."""
        return self.get_frames(self.get_model(model_id).training_frame_ids)

    def trigger_check(self, model_id: str) -> CheckDoc | None:
        """The failed check that triggered the fit of ``model_id`` (None for a first fit)."""
        model = self.get_model(model_id)
        return self.get_check(model.trigger_check_id) if model.trigger_check_id else None

    def validations(self, model_id: str | None = None, benchmark: str | None = None) -> list[dict]:
        """Stored validation documents, optionally of one model and/or benchmark."""
        criteria = {k: v for k, v in (("model_id", model_id), ("benchmark", benchmark)) if v is not None}
        return [_clean(d) for d in self.collection("validations").query(criteria)]

    def models_with_scores(self, campaign: str) -> list[dict]:
        """All models of a campaign with their validation metrics per benchmark."""
        rows = []
        for model in self.models(campaign):
            scores = {v["benchmark"]: v for v in self.validations(model.model_id)}
            rows.append({"model": model, "validations": scores})
        return rows

    # ----------------------------------------------------------------- benchmarks
    def add_benchmark(self, name: str, frames: list[FrameDoc], source: str, description: str = "") -> dict:
        """Register a named benchmark set (frames stored once, by content)."""
        if self.collection("benchmarks").query_one({"name": name}, properties=["name"]) is not None:
            raise InputError(f"benchmark {name!r} already exists in {self.describe()}; choose another name")
        for frame in frames:
            self.add_frame(frame)
        doc = {
            "name": name, "frame_ids": [f.frame_id for f in frames], "n_frames": len(frames), "source": source,
            "description": description, "config_types": sorted({f.config_type for f in frames}),
            "created_at": now().isoformat(), "schema_version": 1,
        }
        self.collection("benchmarks").update(doc, key="name")
        return doc

    def benchmark(self, name: str) -> dict:
        doc = self.collection("benchmarks").query_one({"name": name})
        if doc is None:
            names = ", ".join(sorted(self.collection("benchmarks").distinct("name"))) or "none"
            raise NotFoundError(f"benchmark {name!r} is not in {self.describe()} (benchmarks: {names})")
        return _clean(doc)

    def benchmarks(self) -> list[dict]:
        return sorted((_clean(d) for d in self.collection("benchmarks").query({})), key=lambda d: d["name"])

    def benchmark_frames(self, name: str) -> list[FrameDoc]:
        return self.get_frames(self.benchmark(name)["frame_ids"])

    # ----------------------------------------------------------------- states
    def put_state(self, state: StateDoc) -> None:
        self.collection("states").update(state.model_dump(mode="json"), key="state_id")

    def get_state(self, state_id: str) -> StateDoc:
        doc = self.collection("states").query_one({"state_id": state_id})
        if doc is None:
            raise StoreError(f"store: MD state {state_id} is missing")
        return StateDoc.model_validate(_clean(doc))

    def find_state(self, state_id: str) -> StateDoc | None:
        doc = self.collection("states").query_one({"state_id": state_id})
        return StateDoc.model_validate(_clean(doc)) if doc else None

    # ----------------------------------------------------------------- ledger
    def record_time(self, entry: LedgerEntry, entry_id: str) -> None:
        """Record a job's wall time once (``entry_id`` makes reruns idempotent)."""
        self.collection("ledger").update({**entry.model_dump(mode="json"), "entry_id": entry_id}, key="entry_id")

    def time_split(self, campaign: str) -> dict[str, float]:
        totals = {"reference": 0.0, "fit": 0.0, "ml_md": 0.0, "other": 0.0}
        for d in self.collection("ledger").query({"campaign": campaign}, properties=["kind", "seconds"]):
            totals[d["kind"]] += d["seconds"]
        return totals

    def close(self) -> None:
        for store in self._stores.values():
            if self.kind != "memory":
                try:
                    store.close()
                except Exception:  # noqa: BLE001
                    pass
        self._stores.clear()
        self._jobstore = None


def _clean(doc: dict) -> dict:
    """Drop backend bookkeeping fields (``_id``, ``last_updated``, ``entry_id``)."""
    return {k: v for k, v in doc.items() if k not in ("_id", "last_updated", "entry_id")}


def open_store(location: str | None = None) -> OtfStore:
    """Open the store at ``location`` (resolved with :func:`resolve_location`)."""
    return OtfStore(resolve_location(location))
