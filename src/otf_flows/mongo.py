"""MongoDB backend of the store: URIs, credentials, and blobs larger than a document.

Credentials never travel inside a location string that is written anywhere. They come from

- ``OTF_MONGO_USER`` / ``OTF_MONGO_PASSWORD``, or
- a credentials file named by ``OTF_MONGO_CREDENTIALS`` (YAML/JSON with ``username``, ``password``),
- or, for interactive use, inline in the URI given on the command line: the store then
  strips them, hands jobs the redacted URI, and keeps the secret in this process only.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote_plus, unquote_plus, urlsplit, urlunsplit

from otf_flows.errors import StoreError

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
    user, password = os.environ.get("OTF_MONGO_USER"), os.environ.get("OTF_MONGO_PASSWORD")
    if user and password:
        return user, password
    path = os.environ.get("OTF_MONGO_CREDENTIALS")
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


def _database(store):
    """The pymongo (or mongomock) database behind a mongo or memory store."""
    if store.kind == "mongo":
        import pymongo

        if getattr(store, "_client", None) is None:
            store._client = pymongo.MongoClient(full_uri(store.location), serverSelectionTimeoutMS=SERVER_TIMEOUT_MS)
        return store._client[database_name(store.location)]
    _enable_mongomock_gridfs()
    return store.collection("campaigns")._collection.database


def _enable_mongomock_gridfs() -> None:
    try:
        import mongomock_ng.gridfs as mock_gridfs
    except ImportError:  # pragma: no cover - plain mongomock
        import mongomock.gridfs as mock_gridfs
    mock_gridfs.enable_gridfs_integration()


def _gridfs(store):
    import gridfs

    return gridfs.GridFS(_database(store), collection="blobs")


def put_blob(store, key: str, data: bytes) -> None:
    """Store ``data`` under ``key`` once, in GridFS (any size; MongoDB's 16 MB limit does not apply)."""
    fs = _gridfs(store)
    if not fs.exists(key):
        fs.put(data, _id=key)


def get_blob(store, key: str) -> bytes:
    """Bytes stored under ``key``."""
    import gridfs

    try:
        return _gridfs(store).get(key).read()
    except gridfs.errors.NoFile:
        raise StoreError(f"store: blob {key} is missing") from None
