"""The store on both backends: embedded (indexed SQLite + files) and the MongoDB code path
(maggma MemoryStore / mongomock + GridFS), selected by the ``store`` fixture's parameter."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from conftest import run_otf

from otf_flows.campaign import config_from_dict
from otf_flows.data import frames_from_xyz
from otf_flows.errors import StoreError
from otf_flows.managers.local import run_campaign
from otf_flows.store import OtfStore


@pytest.fixture(params=["embedded", "mongo"])
def store(request, tmp_path):
    if request.param == "embedded":
        st = OtfStore(str(tmp_path / "store"))
    else:
        st = OtfStore(f"memory://{uuid.uuid4().hex}")
    yield st
    st.close()


def _labelled_xyz(path, n=3, energy_key="QM_energy", forces_key="QM_forces"):
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.info[energy_key] = atoms.get_potential_energy()
        atoms.arrays[forces_key] = atoms.get_forces()
        atoms.info["config_type"] = "bulk" if i % 2 else "rattled"
        atoms.calc = None
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return frames


@pytest.fixture
def short_campaign(store, cu_config):
    """A 150-step EMT campaign run in-process on the parametrised store."""
    cu_config["md"]["total_steps"] = 150
    cu_config["name"] = "short"
    config = config_from_dict(cu_config)
    doc = run_campaign(config, store)
    assert doc.status == "completed"
    return store


def test_lineage_of_a_campaign(short_campaign):
    st = short_campaign
    models = st.models("short")
    checks = st.checks("short")
    failed = [c for c in checks if not c.passed]
    assert len(models) == 1 + len(failed) >= 2
    chain = st.lineage(models[-1].model_id)
    assert len(chain) == len(models)
    assert [m.model_id for m in chain] == [m.model_id for m in reversed(models)]
    failed_ids = {c.check_id for c in failed}
    for model in chain[:-1]:
        assert model.trigger_check_id in failed_ids
        assert st.trigger_check(model.model_id).passed is False
    assert chain[-1].trigger_check_id is None and chain[-1].parent_model_id is None
    counts = [m.n_training_frames for m in reversed(chain)]
    assert all(b > a for a, b in zip(counts, counts[1:]))
    # which frames trained the newest model: every label of the campaign up to its trigger check
    trigger = chain[0].trigger_check_step
    assert {f.frame_id for f in st.frames_of_model(chain[0].model_id)} == {
        f.frame_id for f in st.training_frames("short") if f.md_step <= trigger}


def test_import_twice_adds_no_duplicates(store, tmp_path):
    path = tmp_path / "qm.xyz"
    _labelled_xyz(path)
    keys = dict(energy_key="QM_energy", forces_key="QM_forces")
    for _ in range(2):
        for frame in frames_from_xyz(path, **keys):
            store.add_frame(frame)
    assert store.collection("frames").count() == 3


def test_large_payload_roundtrip(store):
    payload = os.urandom(17 * 1024 * 1024)  # over MongoDB's 16 MB document limit
    key = store.put_blob(payload)
    assert store.put_blob(payload) == key  # stored once
    assert store.get_blob(key) == payload
    with pytest.raises(StoreError):
        store.get_blob("0" * 64)


def _memory_store():
    return OtfStore(f"memory://{uuid.uuid4().hex}")


def test_mongo_blobs_go_through_maggma_gridfsstore():
    from maggma.stores import GridFSStore

    from otf_flows.mongo import blob_store

    st = _memory_store()
    payload = b'{"looks": "like json"}'  # must come back as bytes, not as a parsed document
    key = st.put_blob(payload)
    assert key == hashlib.sha256(payload).hexdigest()
    blobs = blob_store(st)
    assert isinstance(blobs, GridFSStore)
    assert blobs.count({"blob_key": key}) == 1
    assert st.put_blob(payload) == key  # same bytes again: still one copy
    assert blobs.count({"blob_key": key}) == 1
    assert blobs._files_collection.count_documents({}) == 1
    assert st.get_blob(key) == payload
    # a second OtfStore on the same location sees the blob
    other = OtfStore(st.location)
    assert other.get_blob(key) == payload
    with pytest.raises(StoreError, match="missing"):
        other.get_blob("f" * 64)


def test_mongo_blob_of_the_old_layout_is_still_read():
    """Blobs written before GridFSStore: raw bytes as a GridFS file with ``_id`` = key."""
    import gridfs

    from otf_flows.mongo import blob_store

    st = _memory_store()
    database = blob_store(st)._files_collection.database
    old = os.urandom(1000)
    old_key = hashlib.sha256(old).hexdigest()
    gridfs.GridFS(database, collection="blobs").put(old, _id=old_key)  # what put_blob used to do
    assert st.get_blob(old_key) == old
    assert st.put_blob(old) == old_key  # already there: not stored a second time
    assert database["blobs.files"].count_documents({}) == 1
    assert OtfStore(st.location).get_blob(old_key) == old


def test_mongo_gridfsstore_uses_the_store_uri_and_credentials(monkeypatch):
    from otf_flows.mongo import gridfs_store, redact, remember

    clean = remember("mongodb://alice:s3cr%2Ft@db.example:27017/camp")
    assert clean == "mongodb://db.example:27017/camp" == redact(clean)
    gs = gridfs_store(clean)  # not connected: no server needed
    assert gs.database == "camp" and gs.collection_name == "blobs" and gs.key == "blob_key"
    assert gs.uri == "mongodb://alice:s3cr%2Ft@db.example:27017/camp"
    assert gs.mongoclient_kwargs["serverSelectionTimeoutMS"] == 5000


def test_campaign_model_archive_on_the_mongo_path(cu_config, tmp_path):
    """A campaign on the mongomock path stores its model archives through GridFSStore and reads them back."""
    from otf_flows.mongo import blob_store

    st = _memory_store()
    cu_config["md"]["total_steps"] = 150
    cu_config["name"] = "blobs"
    assert run_campaign(config_from_dict(cu_config), st).status == "completed"
    models = st.models("blobs")
    assert models
    blobs = blob_store(st)
    stored = set(blobs.distinct("blob_key"))
    keys = {m.artifact for m in models}
    assert keys <= stored
    for key in keys:
        assert hashlib.sha256(OtfStore(st.location).get_blob(key)).hexdigest() == key
    # the archive unpacks into the model's files (the path MD segments take on a MongoDB store)
    from otf_flows.ml.registry import get_backend, model_dir

    last = models[-1]
    dest = model_dir(OtfStore(st.location), last.model_id, cache=tmp_path / "cache")
    assert (dest / get_backend(last.backend).model_file).exists()

def test_benchmark_sets(store, tmp_path):
    path = tmp_path / "bench.xyz"
    _labelled_xyz(path, n=4)
    frames = frames_from_xyz(path, energy_key="QM_energy", forces_key="QM_forces")
    doc = store.add_benchmark("cu-small", frames, source=str(path))
    assert doc["n_frames"] == 4 and doc["config_types"] == ["bulk", "rattled"]
    assert [f.frame_id for f in store.benchmark_frames("cu-small")] == [f.frame_id for f in frames]
    assert [b["name"] for b in store.benchmarks()] == ["cu-small"]


def test_export_fit_roundtrip_cli(tmp_path, cu_config, write_config):
    cu_config["md"]["total_steps"] = 100
    store = tmp_path / "store"
    result = run_otf("run", str(write_config(cu_config)), "--store", str(store))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "train.xyz"
    result = run_otf("data", "export", "cu-emt", str(out), "--store", str(store))
    assert result.returncode == 0, result.stderr
    st = OtfStore(str(store))
    n_training = len(st.training_frames("cu-emt"))
    result = run_otf("fit", str(out), "--out", str(tmp_path / "model"), "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert model["n_training_frames"] == n_training
    assert (tmp_path / "model" / "gap.xml").exists()
    exported = tmp_path / "exported"
    result = run_otf("export-model", model["model_id"], str(exported), "--store", str(store))
    assert result.returncode == 0, result.stderr
    assert "pair_style quip" in (exported / "lammps.in").read_text()
    assert "xml_label=GAP_" in (exported / "lammps.in").read_text()
    assert any("sparseX" in p.name for p in exported.iterdir())


def test_other_codes_keys_and_bad_keys(tmp_path):
    path = tmp_path / "qm.xyz"
    _labelled_xyz(path)
    store = tmp_path / "store"
    result = run_otf("benchmark", "add", "qm", str(path), "--energy-key", "QM_energy", "--forces-key", "QM_forces",
                     "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_frames"] == 3
    result = run_otf("benchmark", "add", "qm2", str(path), "--store", str(store))
    assert result.returncode == 2
    assert "REF_energy" in result.stderr and "--energy-key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    listed = json.loads(run_otf("benchmark", "list", "--store", str(store), "--json").stdout)
    assert [b["name"] for b in listed] == ["qm"]


def test_credentials_never_stored(tmp_path, cu_config, write_config):
    secret = "s3cr3t-Pa55"
    cu_config["md"]["total_steps"] = 30
    cu_config["store"] = f"mongodb://otfuser:{secret}@db.example.invalid:27017/otf"
    store = tmp_path / "store"
    result = run_otf("run", str(write_config(cu_config)), "--store", str(store))
    assert result.returncode == 0, result.stderr
    assert secret not in result.stderr + result.stdout
    for path in store.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    stored = OtfStore(str(store)).require_campaign("cu-emt").config["store"]
    assert stored == "mongodb://db.example.invalid:27017/otf"


def test_unreachable_mongodb_fails_fast():
    st = OtfStore("mongodb://user:pw@127.0.0.1:9/otf")
    assert "pw" not in st.describe() and st.location == "mongodb://127.0.0.1:9/otf"
    start = time.perf_counter()
    with pytest.raises(StoreError, match="cannot open mongodb://127.0.0.1:9/otf"):
        st.collection("campaigns")
    assert time.perf_counter() - start < 30


def test_unreachable_mongodb_cli_message(tmp_path):
    result = run_otf("models", "--store", "mongodb://127.0.0.1:9/otf", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "cannot open" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_campaign_reuses_another_campaigns_data_and_model(short_campaign, cu_config):
    st = short_campaign
    source = st.training_frames("short")
    last = st.models("short")[-1]
    cu_config.update(name="reuse", num_initial_steps=0)
    cu_config["md"]["total_steps"] = 20
    cu_config["refit"]["previous_data"] = ["campaign:short"]
    doc = run_campaign(config_from_dict(cu_config), st)
    assert doc.status == "completed"
    first = st.get_model("reuse-v1")
    assert set(first.training_frame_ids) >= {f.frame_id for f in source}
    ids_before = set(st.collection("frames").distinct("frame_id"))
    # from another campaign's model directly, no new fit needed
    cu_config.update(name="reuse-model")
    cu_config["refit"]["previous_data"] = [f"model:{last.model_id}"]
    cu_config["model"] = {"initial_model": last.model_id}
    assert run_campaign(config_from_dict(cu_config), st).status == "completed"
    assert st.checks("reuse-model")[0].model_id == last.model_id
    # shared frames are not copied: only check frames not seen before are added (with a fixed gap_fit
    # seed, reuse-v1 equals short's last model, so the two campaigns may check identical frames)
    new = {c.frame_id for c in st.checks("reuse-model")} - ids_before
    assert st.collection("frames").count() == len(ids_before) + len(new)
    assert {f.frame_id for f in st.training_frames("reuse-model")} >= set(last.training_frame_ids)
