"""The embedded store scales: lookups read the documents they return, not the collection (issue 14).

No timings: each store object counts the documents it reads from disk (``stats``), and a lookup
by key must read the same handful of documents in a small and in a large collection. The
durability tests kill writers mid-write and check that nothing is lost, half-written or doubled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from jobflow import Flow, Response, job

from otf_flows.embedded import EmbeddedStore
from otf_flows.managers.local import KEPT_HOSTS, run_flow
from otf_flows.schemas.documents import CheckDoc, FrameDoc
from otf_flows.store import OtfStore


def _frame(i: int, campaign: str = "c") -> FrameDoc:
    return FrameDoc(
        frame_id=f"f{i:05d}", campaign=campaign, source="check", md_step=i, numbers=[29, 29],
        positions=[[0, 0, 0], [1.8, 0, 0]], cell=[[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]], pbc=[True] * 3,
        energy=-1.0, forces=[[0, 0, 0], [0, 0, 0]], reference_hash="h", training_in=[campaign] if i % 2 else [],
    )


def _check(i: int, campaign: str = "c") -> CheckDoc:
    return CheckDoc(check_id=f"{campaign}:check:{i}:m", campaign=campaign, step=i, interval=1, passed=True,
                    new_interval=1, refit=False, model_id="m", frame_id=f"f{i:05d}")


def _fill(st: OtfStore, n: int) -> None:
    st.collection("frames").update([_frame(i).model_dump(mode="json") for i in range(n)], key="frame_id")
    st.collection("checks").update([_check(i).model_dump(mode="json") for i in range(n)], key="check_id")
    st.jobstore.connect()
    st.jobstore.update([{"uuid": f"u{i}", "index": k, "output": {"i": i, "k": k}}
                        for i in range(n) for k in (1, 2)], key=["uuid", "index"])


def _reads(st: OtfStore) -> int:
    return sum(c.stats["documents_read"] for c in st._stores.values() if isinstance(c, EmbeddedStore))


def _lookups(st: OtfStore, i: int) -> dict[str, int]:
    """Documents read by each kind of lookup the campaign jobs make, for item ``i``."""
    out = {}

    def count(name, call):
        before = _reads(st)
        call()
        out[name] = _reads(st) - before

    count("get_check", lambda: st.get_check(f"c:check:{i}:m"))
    count("get_frames", lambda: st.get_frames([f"f{i:05d}"]))
    count("add_frame (existing)", lambda: st.add_frame(_frame(i)))
    count("mark_training", lambda: st.mark_training(f"f{i:05d}", "other"))
    count("put_check", lambda: st.put_check(_check(i)))
    count("frame by campaign, source and step",
          lambda: list(st.collection("frames").query({"campaign": "c", "source": "check", "md_step": i})))
    count("job output, last", lambda: st.jobstore.get_output(f"u{i}"))
    count("job output, first", lambda: st.jobstore.get_output(f"u{i}", which="first"))
    count("job output update", lambda: st.jobstore.update({"uuid": f"u{i}", "index": 2, "output": {}},
                                                          key=["uuid", "index"]))
    return out


def test_lookups_by_key_read_the_same_few_documents_at_any_size(tmp_path):
    small, large = OtfStore(str(tmp_path / "small")), OtfStore(str(tmp_path / "large"))
    _fill(small, 20)
    _fill(large, 2000)
    at_small, at_large = _lookups(small, 7), _lookups(large, 1507)
    assert at_small == at_large, (at_small, at_large)
    assert all(1 <= n <= 2 for n in at_large.values()), at_large  # the document(s) asked for, nothing else
    # the answers are right
    assert large.get_check("c:check:1507:m").step == 1507
    assert large.jobstore.get_output("u1507") == {}
    assert large.jobstore.get_output("u1507", which="first") == {"i": 1507, "k": 1}
    assert "other" in large.get_frames(["f01507"])[0].training_in
    # a query by value reads the matching documents only: half the frames are training frames
    before = _reads(large)
    assert len(large.training_frames("c")) == 1000
    assert _reads(large) - before == 1000


def test_the_counter_sees_a_scan(tmp_path):
    """A criterion the index cannot serve (dotted field, operator) scans the collection: the counter shows it,
    and the answer is still right."""
    st = OtfStore(str(tmp_path / "store"))
    _fill(st, 300)
    jobs = st.jobstore.docs_store
    before = jobs.stats["documents_read"]
    assert [d["uuid"] for d in jobs.query({"output.i": 42})] == ["u42", "u42"]
    assert jobs.stats["documents_read"] - before == 600
    before = jobs.stats["documents_read"]
    assert jobs.count({"index": {"$gt": 1}}) == 300
    assert jobs.stats["documents_read"] - before == 600


def test_queries_keep_mongodb_semantics(tmp_path):
    """The index narrows, mongomock's matcher decides: arrays, int/float, $in, sort, projection, missing fields."""
    coll = OtfStore(str(tmp_path / "store")).collection("frames")
    coll.update([{"frame_id": "a", "md_step": 1, "training_in": ["x", "y"], "energy": 2.5},
                 {"frame_id": "b", "md_step": 2.0, "training_in": [], "nested": {"k": 1}},
                 {"frame_id": "c", "md_step": 3, "training_in": ["y"], "flags": None}], key="frame_id")
    ids = lambda criteria, **kw: [d["frame_id"] for d in coll.query(criteria, **kw)]
    assert ids({"training_in": "y"}) == ["a", "c"]
    assert ids({"md_step": 2}) == ["b"] and ids({"md_step": 1.0}) == ["a"]
    assert ids({"frame_id": {"$in": ["c", "a", "zz"]}}) == ["a", "c"]
    assert ids({"frame_id": {"$in": []}}) == []
    assert ids({"flags": None}) == ["a", "b", "c"]  # null matches missing (a scan)
    assert ids({"nested.k": 1}) == ["b"]
    assert ids({"md_step": {"$gte": 2}}, sort={"md_step": -1}) == ["c", "b"]
    assert ids({}, sort={"energy": 1}) == ["b", "c", "a"]  # missing sorts first
    assert ids({}, skip=1, limit=1) == ["b"]
    assert coll.query_one({"frame_id": "a"}, properties=["energy"]) == {"energy": 2.5}
    assert sorted(coll.distinct("training_in")) == ["x", "y"]
    coll.update({"frame_id": "a", "md_step": 9}, key="frame_id")  # replace, index entries follow
    assert ids({"training_in": "x"}) == [] and ids({"md_step": 9}) == ["a"] and coll.count() == 3
    coll.remove_docs({"md_step": 9})
    assert ids({}) == ["b", "c"] and ids({"frame_id": "a"}) == []


WRITER = textwrap.dedent("""
    import sys
    from otf_flows.store import OtfStore
    coll = OtfStore(sys.argv[1]).collection("frames")
    start, batch = int(sys.argv[2]), 50
    for n in range(start, 10**9, batch):
        coll.update([{"frame_id": f"f{i}", "md_step": i, "blob": "x" * 2000, "writer": start}
                     for i in range(n, n + batch)], key="frame_id")
        if n == start:
            print("writing", flush=True)
""")


def _consistent(coll: EmbeddedStore) -> list[dict]:
    """Every document is whole, once, and found through the index exactly as by a scan."""
    docs = list(coll.query({}))
    keys = [d["frame_id"] for d in docs]
    assert len(keys) == len(set(keys))
    for d in docs:
        assert d["blob"] == "x" * 2000 and d["frame_id"] == f"f{d['md_step']}"
    for d in docs[:: max(len(docs) // 50, 1)]:
        assert coll.query_one({"frame_id": d["frame_id"]}) == d
        assert [x["frame_id"] for x in coll.query({"md_step": d["md_step"]})] == [d["frame_id"]]
    return docs


def _start_writer(store: str, start: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, store, str(start)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ})
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_sigkill_mid_write_loses_nothing_committed_and_half_writes_nothing(tmp_path):
    store = str(tmp_path / "store")
    for start in (0, 0, 10**6):  # rewrite the same keys, then new ones
        proc = _start_writer(store, start)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    coll = OtfStore(store).collection("frames")
    docs = _consistent(coll)
    assert len(docs) % 50 == 0 and len(docs) >= 100  # each update() is all or nothing
    assert {d["writer"] for d in docs} == {0, 10**6}


def test_concurrent_writers_of_the_same_keys_never_duplicate(tmp_path):
    store = str(tmp_path / "store")
    writers = [_start_writer(store, 0) for _ in range(2)]
    time.sleep(1.0)
    for proc in writers:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _consistent(OtfStore(store).collection("frames"))


def test_a_montydb_store_is_imported_once(tmp_path):
    """A store written by the previous embedded backend (maggma MontyStore under db/) opens with its data."""
    from maggma.stores import MontyStore

    db = tmp_path / "store" / "db"
    old = MontyStore("frames", database_path=str(db), database_name="otf", key="frame_id")
    old.connect()
    old.update([_frame(i).model_dump(mode="json") for i in range(5)], key="frame_id")
    old.close()
    st = OtfStore(str(tmp_path / "store"))
    assert [f.md_step for f in st.frames_of("c")] == [0, 1, 2, 3, 4]
    assert len(st.training_frames("c")) == 2  # through the index
    st.add_frame(_frame(5))
    assert len(OtfStore(str(tmp_path / "store")).frames_of("c")) == 6  # imported once, not again


@pytest.mark.parametrize("n", [1, 700])
def test_get_frames_in_order_with_many_ids(tmp_path, n):
    st = OtfStore(str(tmp_path / "store"))
    st.collection("frames").update([_frame(i).model_dump(mode="json") for i in range(n)], key="frame_id")
    ids = [f"f{i:05d}" for i in reversed(range(n))]
    assert [f.frame_id for f in st.get_frames(ids)] == ids


@job
def _countdown(n: int):
    """A job that emits the next one, as each campaign iteration does (decide -> the next iteration)."""
    if n == 0:
        return 0
    return Response(output=n, addition=Flow([_countdown(n - 1)], name=f"after {n}"))


def test_job_documents_do_not_grow_with_the_iterations(tmp_path):
    """jobflow nests each emitted flow in its emitter's hosts; the local runner keeps the innermost two and the
    campaign's flow, so a job document is as large at iteration 40 as at iteration 1."""
    st = OtfStore(str(tmp_path / "store"))
    root = Flow([_countdown(40)], name="campaign")
    assert run_flow(root, st.jobstore, tmp_path / "runs") == 41
    docs = list(st.jobstore.query({}, properties=["hosts", "output"]))
    assert len(docs) == 41
    assert max(len(d["hosts"]) for d in docs) == KEPT_HOSTS + 1
    assert all(d["hosts"][-1] == root.uuid for d in docs)
    assert st.jobstore.query_one({"output": 0}, properties=["hosts"])["hosts"][-1] == root.uuid


@pytest.mark.parametrize(("fstype", "expected"), [("ext4", "wal"), ("nfs4", "delete"), ("lustre", "delete")])
def test_no_write_ahead_log_on_network_file_systems(tmp_path, monkeypatch, fstype, expected):
    """WAL's shared-memory index does not work across hosts: a store on NFS/Lustre keeps a rollback journal."""
    import sqlite3

    import otf_flows.embedded as embedded

    monkeypatch.delenv("OTF_STORE_JOURNAL", raising=False)
    monkeypatch.setattr(embedded, "_file_system", lambda path: fstype)
    st = OtfStore(str(tmp_path / "store"))
    st.put_check(_check(1))
    db = sqlite3.connect(tmp_path / "store" / "db" / embedded.DB_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == expected
    assert dict(db.execute('SELECT key, value FROM "otf.meta"'))["journal_mode"] == expected
    monkeypatch.setenv("OTF_STORE_JOURNAL", "delete")
    assert embedded.journal_mode(tmp_path) == "delete"
