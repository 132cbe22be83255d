"""Every ``OTF_*`` environment variable, read in one place (pydantic-settings, as atomate2 and jobflow do).

| variable | field | read by |
|---|---|---|
| ``OTF_STORE`` | ``store`` | the store location when ``--store`` is not given (:func:`otf_flows.store.resolve_location`) |
| ``OTF_CACHE_DIR`` | ``cache_dir`` | :func:`otf_flows.dirs.cache_dir` |
| ``OTF_SCRATCH_DIR`` | ``scratch_dir`` | :func:`otf_flows.dirs.scratch_dir` |
| ``OTF_LOG_LEVEL`` | ``log_level`` | the ``otf`` command's logging |
| ``OTF_FAILPOINT``, ``OTF_FAILPOINT_COUNTS``, ``OTF_FAILPOINT_RELEASE`` | ``failpoint*`` | :mod:`otf_flows.faults` (tests) |
| ``OTF_HOLD`` | ``hold`` | :mod:`otf_flows.faults` (tests of walkers side by side) |
| ``OTF_MONGO_USER``, ``OTF_MONGO_PASSWORD``, ``OTF_MONGO_CREDENTIALS`` | ``mongo_*`` | :mod:`otf_flows.mongo` |
| ``OTF_STORE_JOURNAL`` | ``store_journal`` | :func:`otf_flows.embedded.journal_mode` |
| ``OTF_NTASKS`` | ``ntasks`` | MPI tasks of a batch allocation (set by ``otf submit --batch`` scripts) |

The environment is read when :func:`otf_settings` is called (not once per process), so a variable set
later, e.g. by a batch script or a test, is seen. Values are kept as given (empty means unset); their
checks stay where they are used, with messages naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OtfSettings", "otf_settings"]

PREFIX = "OTF_"


class OtfSettings(BaseSettings):
    """The ``OTF_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", env_ignore_empty=False)

    store: str | None = Field(None, description="Store directory or mongodb:// URI (after --store).")
    cache_dir: str | None = Field(None, description="Cache directory (after --cache-dir and execution.cache_dir).")
    scratch_dir: str | None = Field(None, description="Root of the job directories (after execution.scratch_dir).")
    log_level: str | None = Field(None, description="Log level of the otf command (default WARNING).")
    failpoint: str | None = Field(None, description="NAME:N[:kill|hold=SECONDS]: act at the N-th pass of a failpoint.")
    failpoint_counts: str | None = Field(None, description="File counting failpoint passes across processes.")
    failpoint_release: str | None = Field(None, description="File whose existence releases a failpoint hold.")
    hold: str | None = Field(None, description="NAME=PATH: hold the process at a failpoint until the file PATH "
                             "exists (tests).")
    mongo_user: str | None = Field(None, description="MongoDB user (with OTF_MONGO_PASSWORD).")
    mongo_password: str | None = Field(None, description="MongoDB password (with OTF_MONGO_USER).", repr=False)
    mongo_credentials: str | None = Field(None, description="YAML file with MongoDB 'username' and 'password'.")
    store_journal: str | None = Field(None, description="SQLite journal of an embedded store: wal or delete.")
    ntasks: str | None = Field(None, description="MPI tasks of the batch allocation (otf submit --batch).")


def otf_settings(env: Mapping[str, str] | None = None) -> OtfSettings:
    """The ``OTF_*`` settings of the environment now, or of the mapping ``env`` (e.g. a job's environment)."""
    if env is None:
        return OtfSettings()
    fields = OtfSettings.model_fields
    given = {key[len(PREFIX):].lower(): value for key, value in env.items() if key.startswith(PREFIX)}
    return OtfSettings.model_construct(**{key: given.get(key) for key in fields})
