"""The embedded store: a maggma ``Store`` on one SQLite file, with lookups by value instead of scans.

Each collection is a table of BSON documents plus an index table holding, for every document,
each top-level scalar field and each scalar element of a top-level array as ``(field, value)``.
A criterion with an equality or ``$in`` on any top-level field reads only the documents that
hold the value, so looking up a job output, a frame or a check costs the same in a store of 50
and of 50 000 documents. The index only narrows the candidates; mongomock's matcher (MongoDB's
semantics) decides, and criteria the index cannot serve (other operators, dotted fields,
``None``, long strings) fall back to a scan of the collection: slower, never wrong.

Durability: every write is one SQLite transaction with ``synchronous=FULL`` (as montydb had
it): a process killed mid-write leaves a document and its index entries either entirely
written or untouched, and a committed write survives a power cut; ``update`` finds and
replaces a document by its key inside the same transaction, so concurrent writers never
duplicate it. The journal is SQLite's write-ahead log (one fsync per commit) on a local disk,
and montydb's rollback journal on a network file system (NFS, Lustre, GPFS, ...), where the
WAL's shared-memory index cannot work across the hosts that open the store; ``OTF_STORE_JOURNAL``
(``wal`` or ``delete``) overrides the choice for a new store. A store written by the previous
embedded backend (maggma ``MontyStore`` under ``db/``) is copied into the new file once, on
first open, under a file lock; the old files are left as they were.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import bson
from maggma.core import Store
from mongomock.filtering import filter_applies
from monty.json import jsanitize

from otf_flows.errors import StoreError
from otf_flows.settings import otf_settings

DB_FILE = "otf.sqlite3"
#: layout of the database file (table ``otf.meta``)
SCHEMA_VERSION = 1
#: strings longer than this are not indexed (a query on such a value scans)
MAX_INDEXED_CHARS = 256
BUSY_TIMEOUT_S = 60.0
#: when one criterion narrows the candidates to at most this many documents, use it alone
SELECTIVE = 64
_CHUNK = 500
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MISSING = object()


class EmbeddedStore(Store):
    """A maggma store for one collection of the embedded database ``<database_path>/otf.sqlite3``.

    Parameters
    ----------
    collection_name
        Table name (letters, digits, ``_.-``).
    database_path
        Directory of the database file (the campaign store's ``db/``).
    key
        The store's key field (maggma); ``update`` replaces by it unless given another key.
    """

    def __init__(self, collection_name: str, database_path: str, key: str = "task_id", **kwargs):
        if not _NAME.match(collection_name):
            raise StoreError(f"store: collection name {collection_name!r} may hold only letters, digits and _.-")
        self.collection_name = collection_name
        self.database_path = database_path
        self.kwargs = kwargs
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()
        #: documents read from disk and queries run by this store object (what the tests count)
        self.stats: Counter = Counter()
        super().__init__(key=key, **kwargs)
        self._docs = f'"{collection_name}"'
        self._idx = f'"{collection_name}.idx"'

    # ----------------------------------------------------------------- connection
    @property
    def name(self) -> str:
        return f"sqlite://{Path(self.database_path) / DB_FILE}#{self.collection_name}"

    @property
    def _collection(self):
        return self

    def connect(self, force_reset: bool = False):
        if self._conn is not None and self._pid == os.getpid() and not force_reset:
            return
        if self._pid == os.getpid():
            self.close()
        self._conn = None  # a connection inherited through fork() is never used
        path = Path(self.database_path)
        path.mkdir(parents=True, exist_ok=True)
        if not (path / DB_FILE).exists():
            _create_database(path)
        conn = sqlite3.connect(path / DB_FILE, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                              (self.collection_name,)).fetchone()
        if not exists:
            with _transaction(conn, write=True):
                _create_tables(conn, self.collection_name)
        self._conn, self._pid = conn, os.getpid()

    def close(self):
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, EmbeddedStore) and other.database_path == self.database_path
                and other.collection_name == self.collection_name and other.key == self.key)

    def __hash__(self) -> int:
        return hash((self.database_path, self.collection_name, self.key))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.connect()
        return self._conn

    # ----------------------------------------------------------------- reading
    def query(self, criteria: dict | None = None, properties: dict | list | None = None,
              sort: dict | None = None, hint: dict | None = None, skip: int = 0, limit: int = 0, **kwargs):
        """Documents matching ``criteria`` (MongoDB filter), with maggma's ``properties``/``sort``/``skip``/``limit``."""
        criteria = criteria or {}
        sort = sort or None
        with self._lock:
            conn = self._connection()
            self.stats["queries"] += 1
            with _transaction(conn):
                matches = self._find(conn, criteria, limit=0 if sort else skip + limit if limit else 0)
        docs = [doc for _, doc in matches]
        if sort:
            docs = _sorted(docs, sort)
        docs = docs[skip:skip + limit] if limit else docs[skip:]
        for doc in docs:
            yield _project(doc, properties)

    def count(self, criteria: dict | None = None, hint: dict | None = None) -> int:
        with self._lock:
            conn = self._connection()
            if not criteria:
                return conn.execute(f"SELECT count(*) FROM {self._docs}").fetchone()[0]
            with _transaction(conn):
                return len(self._find(conn, criteria))

    def distinct(self, field: str, criteria: dict | None = None, all_exist: bool = False) -> list:
        values, seen = [], set()
        for doc in self.query(criteria, properties=[field]):
            value = _get(doc, field)
            if value is _MISSING:
                continue
            for item in value if isinstance(value, list) else [value]:
                marker = repr(item)
                if marker not in seen:
                    seen.add(marker)
                    values.append(item)
        return values

    def groupby(self, keys: list[str] | str, criteria: dict | None = None, properties: dict | list | None = None,
                sort: dict | None = None, skip: int = 0, limit: int = 0):
        keys = [keys] if isinstance(keys, str) else list(keys)
        if properties:
            properties = [*(properties.keys() if isinstance(properties, dict) else properties), *keys]
        groups: dict[str, tuple[dict, list]] = {}
        for doc in self.query(criteria, properties=properties, sort=sort, skip=skip, limit=limit):
            group: dict = {}
            for key in keys:
                value = _get(doc, key)
                if value is not _MISSING:
                    _set(group, key, value)
            groups.setdefault(repr(sorted(group.items())), (group, []))[1].append(doc)
        yield from groups.values()

    def ensure_index(self, key: str, unique: bool = False) -> bool:
        """Every top-level field is indexed already; dotted fields are not (their queries scan)."""
        return "." not in key and not unique

    # ----------------------------------------------------------------- writing
    def update(self, docs: list[dict] | dict, key: list | str | None = None):
        """Insert or replace each document by ``key`` (default: the store's key), in one transaction."""
        docs = docs if isinstance(docs, list) else [docs]
        keys = key or self.key
        keys = keys if isinstance(keys, list) else [keys]
        prepared = []
        for doc in docs:
            doc = jsanitize(doc, allow_bson=True)
            if self.validator and not self.validator.is_valid(doc):
                if self.validator.strict:
                    raise ValueError(self.validator.validation_errors(doc))
                self.logger.error(self.validator.validation_errors(doc))
                continue
            try:
                search = {k: doc[k] for k in keys}
            except KeyError as err:
                raise StoreError(f"store: document without key field {err.args[0]!r} in {self.collection_name}") from None
            prepared.append((search, doc, bson.encode(doc), _index_entries(doc)))
        if not prepared:
            return
        with self._lock:
            conn = self._connection()
            with _transaction(conn, write=True):
                for search, _doc, blob, entries in prepared:
                    found = self._find(conn, search, limit=1)
                    if found:
                        row = found[0][0]
                        conn.execute(f"UPDATE {self._docs} SET doc=? WHERE id=?", (blob, row))
                        conn.execute(f"DELETE FROM {self._idx} WHERE id=?", (row,))
                    else:
                        row = conn.execute(f"INSERT INTO {self._docs}(doc) VALUES (?)", (blob,)).lastrowid
                    conn.executemany(f"INSERT INTO {self._idx}(field, value, id) VALUES (?, ?, ?)",
                                     [(field, value, row) for field, value in entries])

    def put_if(self, doc: dict, expected: dict | None) -> bool:
        """Replace the document of ``doc``'s key by ``doc`` if the stored one matches the MongoDB filter
        ``expected`` (None: insert only if there is none), in one write transaction; whether it was written."""
        doc = jsanitize(doc, allow_bson=True)
        with self._lock:
            conn = self._connection()
            with _transaction(conn, write=True):
                found = self._find(conn, {self.key: doc[self.key]}, limit=1)
                if (expected is None) != (not found) or (found and not filter_applies(expected, found[0][1])):
                    return False
                if found:
                    row = found[0][0]
                    conn.execute(f"UPDATE {self._docs} SET doc=? WHERE id=?", (bson.encode(doc), row))
                    conn.execute(f"DELETE FROM {self._idx} WHERE id=?", (row,))
                else:
                    row = conn.execute(f"INSERT INTO {self._docs}(doc) VALUES (?)", (bson.encode(doc),)).lastrowid
                conn.executemany(f"INSERT INTO {self._idx}(field, value, id) VALUES (?, ?, ?)",
                                 [(field, value, row) for field, value in _index_entries(doc)])
        return True

    def remove_docs(self, criteria: dict):
        with self._lock:
            conn = self._connection()
            with _transaction(conn, write=True):
                rows = [row for row, _ in self._find(conn, criteria or {})]
                for i in range(0, len(rows), _CHUNK):
                    chunk = rows[i:i + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    conn.execute(f"DELETE FROM {self._docs} WHERE id IN ({marks})", chunk)
                    conn.execute(f"DELETE FROM {self._idx} WHERE id IN ({marks})", chunk)

    # ----------------------------------------------------------------- matching
    def _find(self, conn: sqlite3.Connection, criteria: dict, limit: int = 0) -> list[tuple[int, dict]]:
        """(row id, document) of the matching documents in insertion order, at most ``limit`` (0: all)."""
        rows = self._candidates(conn, criteria)
        out: list[tuple[int, dict]] = []
        if rows is None:  # no usable index: scan in batches, stop early at the limit
            last = 0
            while True:
                batch = conn.execute(f"SELECT id, doc FROM {self._docs} WHERE id > ? ORDER BY id LIMIT ?",
                                     (last, _CHUNK)).fetchall()
                if not batch:
                    return out
                if self._collect(batch, criteria, out, limit):
                    return out
                last = batch[-1][0]
        for i in range(0, len(rows), _CHUNK):
            chunk = rows[i:i + _CHUNK]
            batch = conn.execute(
                f"SELECT id, doc FROM {self._docs} WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id", chunk
            ).fetchall()
            if self._collect(batch, criteria, out, limit):
                break
        return out

    def _collect(self, batch: list, criteria: dict, out: list, limit: int) -> bool:
        """Decode and match one batch into ``out``; True once ``limit`` matches are there."""
        for row, blob in batch:
            doc = bson.decode(blob)
            self.stats["documents_read"] += 1
            if not criteria or filter_applies(criteria, doc):
                out.append((row, doc))
                if limit and len(out) >= limit:
                    return True
        return False

    def _candidates(self, conn: sqlite3.Connection, criteria: dict) -> list[int] | None:
        """Sorted row ids that may match, from the index; None when no criterion can use it."""
        terms = []
        for field, condition in criteria.items():
            if field.startswith("$") or "." in field:
                continue
            if isinstance(condition, dict):
                if list(condition) == ["$in"] and isinstance(condition["$in"], (list, tuple)):
                    values = [_token(v) for v in condition["$in"]]
                elif list(condition) == ["$eq"]:
                    values = [_token(condition["$eq"])]
                else:
                    continue
            else:
                values = [_token(condition)]
            if None not in values:
                terms.append((field, sorted(set(values))))
        if not terms:
            return None
        if any(not values for _, values in terms):
            return []  # an empty $in matches nothing
        if len(terms) > 1:
            sizes = [self._estimate(conn, field, values) for field, values in terms]
            best = min(range(len(terms)), key=sizes.__getitem__)
            if sizes[best] <= SELECTIVE:
                terms = [terms[best]]
        rows: set[int] | None = None
        for field, values in terms:
            found: set[int] = set()
            for i in range(0, len(values), _CHUNK):
                chunk = values[i:i + _CHUNK]
                found.update(r for (r,) in conn.execute(
                    f"SELECT id FROM {self._idx} WHERE field=? AND value IN ({','.join('?' * len(chunk))})",
                    (field, *chunk)))
            rows = found if rows is None else rows & found
            if not rows:
                return []
        return sorted(rows)

    def _estimate(self, conn: sqlite3.Connection, field: str, values: list[str]) -> int:
        """How many index entries ``field`` has for ``values``, counted up to SELECTIVE + 1 only."""
        if len(values) > SELECTIVE:
            return len(values)
        marks = ",".join("?" * len(values))
        return conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {self._idx} WHERE field=? AND value IN ({marks}) "
                            f"LIMIT {SELECTIVE + 1})", (field, *values)).fetchone()[0]


# ----------------------------------------------------------------------------- database file
def _create_tables(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{name}" (id INTEGER PRIMARY KEY, doc BLOB NOT NULL)')
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{name}.idx" (field TEXT NOT NULL, value TEXT NOT NULL, '
                 'id INTEGER NOT NULL, PRIMARY KEY (field, value, id)) WITHOUT ROWID')
    conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}.idx.id" ON "{name}.idx" (id)')


class _transaction:
    """``BEGIN`` (a consistent snapshot for reads) or ``BEGIN IMMEDIATE`` (writes) ... ``COMMIT``/``ROLLBACK``."""

    def __init__(self, conn: sqlite3.Connection, write: bool = False):
        self.conn, self.write = conn, write

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        return self.conn

    def __exit__(self, exc_type, *exc):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _create_database(path: Path) -> None:
    """Create ``path/otf.sqlite3`` once (under a file lock), importing a montydb store found there.

    The file is built under a temporary name and renamed into place, so a process killed
    meanwhile leaves no half-made database (the next open starts again).
    """
    with open(path / ".otf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / DB_FILE).exists():
            return
        tmp = path / f"{DB_FILE}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            journal = journal_mode(path)
            with _transaction(conn, write=True):
                conn.execute('CREATE TABLE "otf.meta" (key TEXT PRIMARY KEY, value TEXT NOT NULL)')
                conn.executemany('INSERT INTO "otf.meta" VALUES (?, ?)',
                                 [("schema_version", str(SCHEMA_VERSION)), ("journal_mode", journal)])
                if (path / "monty.storage.cfg").exists():
                    _import_montydb(path, conn)
                    conn.execute('INSERT INTO "otf.meta" VALUES (?, ?)', ("imported_from", "montydb"))
            if journal == "wal":
                conn.execute("PRAGMA journal_mode=WAL")  # stored in the file: every connection uses it
        finally:
            conn.close()
        os.replace(tmp, path / DB_FILE)


#: file systems (``/proc/self/mountinfo`` types) shared between hosts: no WAL there
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph", "glusterfs",
                        "panfs", "afs", "9p", "fuse")


def journal_mode(path: Path) -> str:
    """``wal`` for a new database under ``path`` on a local disk, ``delete`` on a network file system
    (or as ``OTF_STORE_JOURNAL`` says)."""
    forced = (otf_settings().store_journal or "").lower()
    if forced in ("wal", "delete"):
        return forced
    if forced:
        raise StoreError(f"OTF_STORE_JOURNAL: {forced!r} is not 'wal' or 'delete'")
    fstype = _file_system(Path(path).resolve())
    return "delete" if fstype and fstype.split(".")[0] in NETWORK_FILE_SYSTEMS else "wal"


def _file_system(path: Path) -> str | None:
    """Type of the file system holding ``path`` (Linux; None where /proc is missing)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    best, fstype = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, fstype = mount, right.split()[0]
    return fstype


def _import_montydb(path: Path, conn: sqlite3.Connection) -> None:
    """Copy every collection of the montydb store of the previous embedded backend into ``conn``."""
    from montydb import MontyClient

    database = MontyClient(str(path))["otf"]
    for name in database.list_collection_names():
        if not _NAME.match(name):
            continue
        _create_tables(conn, name)
        for doc in database[name].find():
            doc.pop("_id", None)
            row = conn.execute(f'INSERT INTO "{name}"(doc) VALUES (?)', (bson.encode(doc),)).lastrowid
            conn.executemany(f'INSERT INTO "{name}.idx"(field, value, id) VALUES (?, ?, ?)',
                             [(field, value, row) for field, value in _index_entries(doc)])


# ----------------------------------------------------------------------------- documents
def _token(value: Any) -> str | None:
    """The index form of a scalar (numbers compare across int/float/bool), None if not indexed."""
    if isinstance(value, str):
        return "s" + value if len(value) <= MAX_INDEXED_CHARS else None
    if isinstance(value, (bool, int)):
        return f"n{int(value)}"
    if isinstance(value, float):
        return f"n{int(value)}" if value.is_integer() else f"n{value!r}"
    return None


def _index_entries(doc: dict) -> set[tuple[str, str]]:
    entries = set()
    for field, value in doc.items():
        for item in value if isinstance(value, list) else (value,):
            token = _token(item)
            if token is not None:
                entries.add((field, token))
    return entries


def _get(doc: dict, path: str):
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _set(doc: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def _project(doc: dict, properties: dict | list | None) -> dict:
    """MongoDB projection: included fields (dotted paths allowed), or the document minus excluded ones."""
    if not properties:
        return doc
    if isinstance(properties, list):
        properties = dict.fromkeys(properties, 1)
    include = [p for p, on in properties.items() if on]
    if include:
        out: dict = {}
        for path in include:
            value = _get(doc, path)
            if value is not _MISSING:
                _set(out, path, value)
        return out
    out = dict(doc)
    for path in properties:
        *parents, last = path.split(".")
        target = _get(out, ".".join(parents)) if parents else out
        if isinstance(target, dict):
            target.pop(last, None)
    return out


_RANK = ((type(None), 0), (bool, 5), (int, 1), (float, 1), (str, 2), (dict, 3), (list, 4), (datetime, 6))


def _order(value) -> tuple:
    """Sort key in MongoDB's order of types: missing/null < numbers < strings < objects < arrays < bools < dates."""
    if value is _MISSING or value is None:
        return (0, 0)
    for kind, rank in _RANK:
        if isinstance(value, kind):
            return (rank, value if rank in (1, 2, 5, 6) else repr(value))
    return (7, repr(value))


def _sorted(docs: list[dict], sort: dict) -> list[dict]:
    for field, direction in reversed(list(sort.items())):
        direction = getattr(direction, "value", direction)
        docs = sorted(docs, key=lambda d, f=field: _order(_get(d, f)), reverse=direction == -1)
    return docs
