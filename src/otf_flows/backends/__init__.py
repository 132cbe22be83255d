"""Compatibility: the module paths of the former ``otf_flows.backends`` package that serialised objects name.

Reference engines now live in :mod:`otf_flows.reference`, ML models in :mod:`otf_flows.ml`. What older
versions wrote still names the old modules, and must keep loading:

- ``otf_flows.backends.ml_settings`` (``GapModel``, ``MaceModel``), ``otf_flows.backends.cp2k_settings``
  (``Cp2kReference``) and ``otf_flows.backends.vasp_settings`` (``VaspReference``): the ``@module`` of a
  serialised ``OtfMDMaker``'s ``model`` and ``reference`` fields (a Maker in a LaunchPad, in a JSON file);
- ``otf_flows.backends.mace``: the ``python -c`` entry of a MACE committee fit started by an older process.

Each old path is an alias of the new module (the same module object, so classes compare equal), resolved
on import by a finder registered when this package is imported; ``import otf_flows.backends.mace`` works
as before. Nothing else may import this package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "otf_flows.backends.ml_settings": "otf_flows.ml.registry",
    "otf_flows.backends.cp2k_settings": "otf_flows.reference.cp2k.settings",
    "otf_flows.backends.vasp_settings": "otf_flows.reference.vasp.settings",
    "otf_flows.backends.mace": "otf_flows.ml.mace.backend",
}
"""Old dotted path -> the module that holds its names now."""


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path of :data:`MOVED` as the new module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        """The module was executed under its new name."""


if not any(isinstance(finder, _Aliases) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Aliases())
