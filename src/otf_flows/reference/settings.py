"""What every reference block shares: the ASE engine's settings, and which keys are physics.

``reference: {engine: ase, ...}`` is :class:`AseReference`; CP2K's and VASP's blocks live with their
engines (:mod:`otf_flows.reference.cp2k.settings`, :mod:`otf_flows.reference.vasp.settings`). Only
pydantic here: :mod:`otf_flows.campaign` imports this module.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Literal

from pydantic import Field, field_validator

from otf_flows.labels import settings_hash
from otf_flows.yaml_config import Strict

__all__ = ["RUN_KEYS", "SCF_PATH_KEYS", "SCF_PATH_UPDATES", "AseReference", "kpoint_words"]

RUN_KEYS = frozenset({"retries", "cp2k_cmd", "omp_threads", "custodian_max_errors", "vasp_cmd", "vasp_gamma_cmd"})
"""Keys of a ``reference`` block that say how to run the engine, not what it computes: they are
in no hash of the labels and may change on ``--resume`` (more cores, another MPI launcher)."""

SCF_PATH_KEYS = frozenset({"max_scf", "mixing_method", "mixing_alpha", "mixing_nbuffer", "mixing_beta", "nelm"})
"""Keys of a ``reference`` block that change how the SCF gets to its converged solution (mixing,
damping, iteration limit), not the solution (converged to ``eps_scf``/``EDIFF``, which stay in the
hash): like :data:`RUN_KEYS` in no hash of the labels and free to change on ``--resume``."""

SCF_PATH_UPDATES = frozenset({"alpha", "beta", "nbuffer", "mixing_method", "n_simple_mix"})
"""The same for keywords of pymatgen's ``DftSet`` given through ``reference.input_updates``."""


def label_identity(reference) -> tuple[str, dict]:
    """Hash and plain dict of ``reference`` settings (a reference block): the hash covers what the labels depend
    on, without how the engine is run (:data:`RUN_KEYS`: command, threads, retries) or how the SCF gets there
    (:data:`SCF_PATH_KEYS`: mixing, damping, iteration limit); the dict (stored with every label) keeps the
    SCF settings too."""
    settings = reference.model_dump(mode="json", exclude=set(RUN_KEYS))
    return settings_hash(physics_settings(settings)), settings


def physics_settings(settings: dict) -> dict:
    """``settings`` (a dumped reference block) without the keys that only change the SCF's path to its solution."""
    out = {key: value for key, value in settings.items() if key not in SCF_PATH_KEYS}
    if isinstance(out.get("input_updates"), dict):
        out["input_updates"] = {k: v for k, v in out["input_updates"].items() if k not in SCF_PATH_UPDATES}
    return out


class AseReference(Strict):
    """Reference engine: any ASE calculator, named by import path."""

    engine: Literal["ase"] = Field("ase", description="Reference engine: any ASE calculator, named by import path.")
    calculator: str = Field(description="Import path of an ASE calculator class, e.g. ase.calculators.emt.EMT.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the calculator.")
    retries: int = Field(1, ge=0, description="Extra attempts after a failed reference calculation.")

    @field_validator("calculator")
    @classmethod
    def _dotted(cls, v: str) -> str:
        if "." not in v or v.startswith(".") or v.endswith("."):
            raise ValueError("must be a dotted import path such as ase.calculators.emt.EMT")
        return v

    @field_validator("calculator")
    @classmethod
    def _importable(cls, v: str) -> str:
        """The path must name a class or callable; a module that fails to import because a dependency is
        missing is left to the engine's check (backend unavailable, with an install hint)."""
        module_name, _, attr = v.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                hint = "" if importlib.util.find_spec(module_name.split(".")[0]) else \
                    " (a typo, or install the package that provides it)"
                raise ValueError(f"no module named {err.name!r}{hint}; give the import path of an ASE calculator "
                                 "class such as ase.calculators.emt.EMT") from None
            return v
        except Exception:  # noqa: BLE001 - the module exists but does not import here: checked at run time
            return v
        if not hasattr(module, attr):
            raise ValueError(f"module {module_name!r} has no {attr!r}")
        if not callable(getattr(module, attr)):
            raise ValueError(f"{attr!r} in module {module_name!r} is not a class or callable")
        return v

    @staticmethod
    def level_of_theory(reference: dict) -> list[str]:
        """Words of the level of theory of stored settings: the calculator's class and keyword arguments."""
        return [str(reference.get("calculator", "?")).rpartition(".")[2],
                *(f"{k}={v}" for k, v in sorted((reference.get("kwargs") or {}).items()))]


def kpoint_words(kpoints) -> list[str]:
    """``["k 2x2x2"]`` for a k-point grid other than the Γ point, else nothing."""
    if kpoints and list(kpoints) != [1, 1, 1]:
        return ["k " + "x".join(str(k) for k in kpoints)]
    return []
