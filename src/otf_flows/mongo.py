"""MongoDB backend of the store: URIs, credentials, and blobs (maggma ``GridFSStore``).

Credentials never travel inside a location string that is written anywhere. They come from

- ``OTF_MONGO_USER`` / ``OTF_MONGO_PASSWORD``, or
- a credentials file named by ``OTF_MONGO_CREDENTIALS`` (YAML/JSON with ``username``, ``password``),
- or, for interactive use, inline in the URI given on the command line: the store then
  strips them, hands jobs the redacted URI, and keeps the secret in this process only.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote_plus, unquote_plus, urlsplit, urlunsplit

from otf_flows.errors import StoreError
from otf_flows.settings import otf_settings

#: secrets of locations opened with inline credentials, by redacted location (this process only)
_SECRETS: dict[str, tuple[str, str]] = {}
SERVER_TIMEOUT_MS = 5000


def split_credentials(uri: str) -> tuple[str, tuple[str, str] | None]:
    """``(uri without user:password, (user, password) or None)``."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, (unquote_plus(user), unquote_plus(password))


def redact(uri: str) -> str:
    """The URI with any credentials removed (safe for logs and documents)."""
    return split_credentials(uri)[0]


def remember(uri: str) -> str:
    """Strip inline credentials from ``uri``, keep them for this process, return the clean URI."""
    clean, secret = split_credentials(uri)
    if secret is not None:
        _SECRETS[clean] = secret
    return clean


def credentials(clean_uri: str) -> tuple[str, str] | None:
    """Credentials for a clean URI: this process's memory, the environment, or the credentials file."""
    if clean_uri in _SECRETS:
        return _SECRETS[clean_uri]
    env = otf_settings()
    user, password = env.mongo_user, env.mongo_password
    if user and password:
        return user, password
    path = env.mongo_credentials
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise StoreError(f"OTF_MONGO_CREDENTIALS: {path!r} does not exist")
        import yaml

        data = yaml.safe_load(file.read_text()) or {}
        if not isinstance(data, dict) or "username" not in data or "password" not in data:
            raise StoreError(f"OTF_MONGO_CREDENTIALS: {path!r} must hold 'username' and 'password'")
        return str(data["username"]), str(data["password"])
    return None


def full_uri(clean_uri: str) -> str:
    """The URI with credentials put back in (never write this anywhere)."""
    secret = credentials(clean_uri)
    if secret is None:
        return clean_uri
    parts = urlsplit(clean_uri)
    netloc = f"{quote_plus(secret[0])}:{quote_plus(secret[1])}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def database_name(clean_uri: str) -> str:
    """Database named in the URI path, default ``otf``."""
    name = urlsplit(clean_uri).path.lstrip("/")
    return name or "otf"


def mongo_store(clean_uri: str, collection: str, key: str):
    """A maggma ``MongoStore`` for one collection; fails within seconds if the server is unreachable."""
    from maggma.stores import MongoStore

    return MongoStore(
        database=database_name(clean_uri),
        collection_name=collection,
        uri=full_uri(clean_uri),
        key=key,
        mongoclient_kwargs={"serverSelectionTimeoutMS": SERVER_TIMEOUT_MS, "connectTimeoutMS": SERVER_TIMEOUT_MS},
    )


#: GridFS bucket of the blobs (``blobs.files`` / ``blobs.chunks``) and the key field of a blob document
BLOB_BUCKET = "blobs"
BLOB_KEY = "blob_key"


def gridfs_store(clean_uri: str, collection: str = BLOB_BUCKET):
    """A maggma ``GridFSStore`` on the same server, database and credentials as :func:`mongo_store`."""
    from maggma.stores import GridFSStore

    return GridFSStore(
        database=database_name(clean_uri),
        collection_name=collection,
        uri=full_uri(clean_uri),
        key=BLOB_KEY,
        mongoclient_kwargs={"serverSelectionTimeoutMS": SERVER_TIMEOUT_MS, "connectTimeoutMS": SERVER_TIMEOUT_MS},
    )


def blob_store(store):
    """The connected ``GridFSStore`` of an :class:`~otf_flows.store.OtfStore` (mongo or memory kind).

    ``mongodb://``: maggma connects with the store's URI and credentials (no client of ours).
    ``memory://``: the same ``GridFSStore`` class, connected to the mongomock database that holds the
    store's ``MemoryStore`` collections (maggma's ``connect`` is handed that mongomock client instead
    of opening a ``pymongo.MongoClient``), so tests run maggma's GridFS code unchanged.
    """
    cached = store._stores.get("__blobs__")
    if cached is not None:
        return cached
    if store.kind == "mongo":
        blobs = gridfs_store(store.location)
        try:
            blobs.connect()
            blobs.ensure_index(BLOB_KEY)
        except Exception as err:  # noqa: BLE001 - any backend failure
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise StoreError(f"store: cannot open blobs of {redact(store.location)}: {first}") from None
    else:
        from unittest import mock

        _enable_mongomock_gridfs()
        database = store.collection("campaigns")._collection.database
        blobs = gridfs_store(f"mongodb://localhost/{database.name}")
        with mock.patch("maggma.stores.gridfs.MongoClient", lambda *args, **kwargs: database.client):
            blobs.connect()
    store._stores["__blobs__"] = blobs
    return blobs


def _enable_mongomock_gridfs() -> None:
    try:
        import mongomock_ng.gridfs as mock_gridfs
    except ImportError:  # pragma: no cover - plain mongomock
        import mongomock.gridfs as mock_gridfs
    mock_gridfs.enable_gridfs_integration()


def put_blob(store, key: str, data: bytes) -> None:
    """Store ``data`` under its content ``key`` once, as one ``GridFSStore`` document.

    The document is ``{"blob_key": key, "data": base64, "size": n}``: maggma's ``GridFSStore``
    stores JSON documents, so the bytes travel base64-encoded (GridFS chunks them: no 16 MB limit).
    Putting the same key again stores nothing; two writers racing on one key leave one copy
    (``GridFSStore.update`` keeps the newest file of a key).
    """
    import base64

    blobs = blob_store(store)
    if blobs.count({BLOB_KEY: key}) or _legacy_exists(blobs, key):
        return
    blobs.update({BLOB_KEY: key, "data": base64.b64encode(data).decode("ascii"), "size": len(data)})


def get_blob(store, key: str) -> bytes:
    """Bytes stored under ``key``: a ``GridFSStore`` document, else a blob of the old layout.

    Old layout (before blobs went through ``GridFSStore``): the raw bytes as a GridFS file whose
    ``_id`` is the key, in the same ``blobs`` bucket. They are read where they are (no migration:
    stores stay readable by older versions, and the bucket holds both kinds side by side).
    """
    import base64

    blobs = blob_store(store)
    doc = next(iter(blobs.query({BLOB_KEY: key})), None)
    if doc is not None and isinstance(doc.get("data"), str):
        return base64.b64decode(doc["data"])
    import gridfs

    try:
        return blobs._collection.get(key).read()  # the GridFS bucket maggma opened
    except gridfs.errors.NoFile:
        raise StoreError(f"store: blob {key} is missing") from None


def _legacy_exists(blobs, key: str) -> bool:
    return blobs._collection.exists(key)
