"""Where otf_flows keeps its cache and its job directories on a node, without assuming ``$HOME``.

Compute nodes of some machines do not mount the home directory, so neither default is under it.
The order, for both:

1. the setting: ``otf run --cache-dir`` / ``--scratch-dir``, else the campaign's
   ``execution.cache_dir`` / ``execution.scratch_dir`` (absolute, or relative to the YAML file);
2. the environment: ``OTF_CACHE_DIR`` / ``OTF_SCRATCH_DIR``;
3. the default: for the cache the node's temporary directory (``$TMPDIR``, what it holds is made
   again on another node); for job directories ``<store>/runs`` next to a store directory, which
   every node must see anyway, and ``./otf-runs`` for a MongoDB store.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from otf_flows.settings import otf_settings


def cache_dir(setting: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``setting``, else ``$OTF_CACHE_DIR``, else the node's temporary directory.

    Parameters
    ----------
    setting
        ``--cache-dir`` or ``execution.cache_dir`` (None: not set).

    Returns
    -------
    Path
        ``<tmp>/otf_flows-cache-<uid>`` (``$TMPDIR``, usually node-local) unless set.
    """
    if setting:
        return Path(setting)
    env = otf_settings().cache_dir
    if env:
        return Path(env).expanduser()
    return Path(tempfile.gettempdir()) / f"otf_flows-cache-{os.getuid()}"


def runs_dir(store, campaign: str) -> Path:
    """The default directory of a campaign's job directories: ``<store>/runs/NAME``, else ``./otf-runs/NAME``."""
    if store.kind == "embedded":
        return store.path / "runs" / campaign
    return Path.cwd() / "otf-runs" / campaign


def scratch_dir(campaign: str, store, setting: str | os.PathLike | None = None) -> Path:
    """Where ``otf run`` puts the job directories of ``campaign``: ``setting``/NAME, else
    ``$OTF_SCRATCH_DIR``/NAME, else :func:`runs_dir`."""
    root = setting or otf_settings().scratch_dir
    if root:
        return Path(root).expanduser() / campaign
    return runs_dir(store, campaign)
