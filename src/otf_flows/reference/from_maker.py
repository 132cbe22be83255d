"""A campaign's ``reference`` block from what an atomate2 user hands over.

:class:`~otf_flows.flows.maker.OtfMDMaker` takes its ``reference_maker`` as any of

- an atomate2 CP2K or VASP static Maker (``atomate2.cp2k.jobs.core.StaticMaker``,
  ``atomate2.vasp.jobs.core.StaticMaker`` or a subclass with that kind of input set);
- an ASE calculator class (``EMT``) or instance (``EMT(asap_cutoff=True)``), or an atomate2 ASE
  single-point Maker (``atomate2.ase.jobs``, ``steps=1``: its calculator's class and ``calculator_kwargs``);
- a reference block: :class:`~otf_flows.campaign.AseReference`, :class:`Cp2kReference`,
  :class:`VaspReference`, or the YAML's mapping.

The engines of :mod:`otf_flows.reference.base` build their own atomate2 ``StaticMaker`` for
every label (with the project's fast MD-checking defaults), so a Maker is mapped onto their
settings, exactly where it can be, and refused where it cannot:

- CP2K: ``input_set_generator.user_input_settings`` — its scalar keys with a field of their own
  (``cutoff``, ``rel_cutoff``, ``ngrids``, ``eps_default``, ``eps_scf``, ``xc_functionals``,
  ``mixing_method``, ``alpha``, ``nbuffer``, ``elec_temp``/``smearing``, per-element
  ``basis_and_potential`` names) go to those fields, the rest to ``input_updates`` (merged last,
  so the Maker's settings win); a Monkhorst-Pack or Γ ``user_kpoints_settings`` grid to
  ``kpoints``; ``run_cp2k_kwargs`` ``cp2k_cmd`` and ``max_errors`` to ``cp2k_cmd`` and
  ``custodian_max_errors``.
- VASP: ``user_incar_settings`` — ENCUT, EDIFF, NELM, ISMEAR, SIGMA, GGA, ISPIN to their fields,
  the other tags to ``incar_updates``; a Γ-centred (or all-odd Monkhorst-Pack) grid to
  ``kpoints``; ``user_potcar_functional``; ``run_vasp_kwargs`` ``vasp_cmd``, ``vasp_gamma_cmd``,
  ``max_errors``.
- ASE: the calculator's import path, and for an instance its non-default parameters
  (``Calculator.todict()``); each label builds a new calculator from them.

Anything else set on a Maker or its input-set generator (another generator class or
``config_dict``, other custodian handlers or run arguments, ``write_additional_data``,
transformations, other k-point schemes) would be lost, so it is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from otf_flows.errors import ConfigError
from otf_flows.reference.cp2k.settings import Cp2kReference
from otf_flows.reference.registry import ReferenceSettings
from otf_flows.reference.settings import AseReference
from otf_flows.reference.vasp.settings import VaspReference
from otf_flows.yaml_config import error_line

__all__ = ["reference_from_maker"]

_CP2K_FIELDS = {
    "cutoff": "cutoff_Ry", "rel_cutoff": "rel_cutoff_Ry", "ngrids": "ngrids", "eps_default": "eps_default",
    "eps_scf": "eps_scf", "mixing_method": "mixing_method", "alpha": "mixing_alpha", "nbuffer": "mixing_nbuffer",
    "elec_temp": "electronic_temperature_K",
}
_VASP_FIELDS = {"ENCUT": "encut_eV", "EDIFF": "ediff_eV", "NELM": "nelm", "ISMEAR": "ismear", "SIGMA": "sigma_eV",
                "GGA": "gga"}
#: Maker fields whose value the engine sets itself (the name is irrelevant)
_ENGINE_OWNED = {"name", "input_set_generator", "run_cp2k_kwargs", "run_vasp_kwargs", "stop_children_kwargs",
                 "store_output_data"}


def reference_from_maker(reference: Any) -> AseReference | Cp2kReference | VaspReference:
    """The ``reference`` block for ``reference`` (see the module docstring for what is accepted).

    Raises
    ------
    ConfigError
        If ``reference`` is of none of the accepted kinds, or sets something the engines cannot carry.
    """
    if isinstance(reference, (AseReference, Cp2kReference, VaspReference)):
        return reference
    if isinstance(reference, Mapping):
        data = {"engine": "ase", **reference}
        try:
            return TypeAdapter(ReferenceSettings).validate_python(data)
        except ValidationError as err:  # the location's first entry is the engine (the union's tag)
            raise ConfigError(f"reference_maker: {error_line(err, skip=1)}") from None
    module = type(reference).__module__ or ""
    if module.startswith("atomate2.cp2k") or _is_maker_of(reference, "atomate2.cp2k.jobs.base", "BaseCp2kMaker"):
        return _from_cp2k_maker(reference)
    if module.startswith("atomate2.vasp") or _is_maker_of(reference, "atomate2.vasp.jobs.base", "BaseVaspMaker"):
        return _from_vasp_maker(reference)
    if _is_maker_of(reference, "atomate2.ase.jobs", "AseMaker"):
        return _from_ase_maker(reference)
    from ase.calculators.calculator import BaseCalculator

    if isinstance(reference, type) and issubclass(reference, BaseCalculator):
        return AseReference(calculator=_import_path(reference))
    if isinstance(reference, BaseCalculator):
        kwargs = reference.todict() if hasattr(reference, "todict") else {}
        try:
            kwargs = json.loads(json.dumps(kwargs))
        except TypeError as err:
            raise ConfigError(f"reference_maker: the parameters of {type(reference).__name__} are not plain data "
                              f"({err}); give a calculator whose todict() is JSON, or a reference block") from None
        return AseReference(calculator=_import_path(type(reference)), kwargs=kwargs)
    raise ConfigError(
        f"reference_maker: {type(reference).__name__} is not an atomate2 CP2K/VASP static maker, an ASE calculator "
        "(class or instance) or a reference block"
    )


def _is_maker_of(obj, module: str, name: str) -> bool:
    try:
        return isinstance(obj, getattr(importlib.import_module(module), name))
    except ImportError:
        return False


def _import_path(cls: type) -> str:
    path = f"{cls.__module__}.{cls.__qualname__}"
    try:
        found = getattr(importlib.import_module(cls.__module__), cls.__qualname__)
    except (ImportError, AttributeError):
        found = None
    if found is not cls:
        raise ConfigError(f"reference_maker: {cls.__qualname__} cannot be imported as {path!r} (a class defined "
                          "in a function or __main__); define it in an importable module")
    return path


def _changed(obj, default, ignore: set[str]) -> list[str]:
    """Dataclass fields of ``obj`` (not in ``ignore``) whose value differs from ``default``'s."""
    return [f.name for f in dataclasses.fields(obj)
            if f.name not in ignore and f.name in {g.name for g in dataclasses.fields(default)}
            and _plain(getattr(obj, f.name)) != _plain(getattr(default, f.name))]


def _plain(value):
    """``value`` with tuples as lists (a Maker read back from JSON holds lists where it was made with tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_maker(maker, generator_cls, generator_fields: set[str], run_key: str, run_allowed: set[str]) -> None:
    kind = "CP2K" if run_key == "run_cp2k_kwargs" else "VASP"
    generator = maker.input_set_generator
    if type(generator) is not generator_cls:
        raise ConfigError(
            f"reference_maker: the input set of a {kind} reference must be atomate2's "
            f"{generator_cls.__module__}.{generator_cls.__name__} (single points), got {type(generator).__name__}"
        )
    problems = [f"{type(maker).__name__}.{name}" for name in _changed(maker, type(maker)(), _ENGINE_OWNED)]
    problems += [f"input_set_generator.{name}"
                 for name in _changed(generator, generator_cls(), generator_fields | {"sort_structure", "structure"})]
    problems += [f"{run_key}[{key!r}]" for key in getattr(maker, run_key) if key not in run_allowed]
    if problems:
        raise ConfigError(
            f"reference_maker: {', '.join(problems)} cannot be carried over to the {kind} reference engine (it takes "
            f"{', '.join(sorted(generator_fields))} and {run_key} {', '.join(sorted(run_allowed))}; see "
            "otf_flows.reference.from_maker)"
        )


def _grid(kpoints, gamma_only: bool) -> tuple[int, int, int]:
    """Divisions of an automatic k-point grid (``{}``/None: the Γ point)."""
    if kpoints is None or kpoints == {}:
        return (1, 1, 1)
    style = str(getattr(getattr(kpoints, "style", None), "name", getattr(kpoints, "style", "")))
    kpts = getattr(kpoints, "kpts", None)
    shift = tuple(getattr(kpoints, "kpts_shift", (0, 0, 0)) or (0, 0, 0))
    if style.lower() in ("gamma", "monkhorst") and kpts and len(kpts) == 1 and not any(shift):
        grid = tuple(int(n) for n in kpts[0])
        if not gamma_only or style.lower() == "gamma" or all(n % 2 for n in grid):
            return grid
    raise ConfigError(
        f"reference_maker: user_kpoints_settings {kpoints!r} is not an unshifted "
        f"{'Γ-centred' if gamma_only else 'Monkhorst-Pack or Γ'} grid (Kpoints.gamma_automatic((n1, n2, n3)))"
    )


def _validated(cls, fields: dict):
    try:
        return cls(**fields)
    except ValidationError as err:
        raise ConfigError(error_line(err, "reference_maker", got=True)) from None


def _from_cp2k_maker(maker) -> Cp2kReference:
    from atomate2.cp2k.sets.core import StaticSetGenerator

    _check_maker(maker, StaticSetGenerator, {"user_input_settings", "user_kpoints_settings"}, "run_cp2k_kwargs",
                 {"cp2k_cmd", "max_errors"})
    settings = copy.deepcopy(dict(maker.input_set_generator.user_input_settings or {}))
    fields: dict[str, Any] = {}
    for key, name in _CP2K_FIELDS.items():
        if key in settings and not isinstance(settings[key], (dict, list)):
            fields[name] = settings.pop(key)
    if isinstance(settings.get("xc_functionals"), str):
        fields["xc_functional"] = settings.pop("xc_functionals")
    if settings.get("smearing") is False:
        settings.pop("smearing")
        fields["electronic_temperature_K"] = None
    elif settings.get("smearing") is True:
        settings.pop("smearing")
    per_element = settings.get("basis_and_potential")
    if isinstance(per_element, dict) and all(
        isinstance(v, dict) and set(v) <= {"basis", "potential"} and all(isinstance(x, str) for x in v.values())
        for v in per_element.values()
    ):
        settings.pop("basis_and_potential")
        fields["basis_set_by_element"] = {el: v["basis"] for el, v in per_element.items() if "basis" in v}
        fields["potential_by_element"] = {el: v["potential"] for el, v in per_element.items() if "potential" in v}
    fields["kpoints"] = _grid(maker.input_set_generator.user_kpoints_settings, gamma_only=False)
    run = maker.run_cp2k_kwargs
    if "cp2k_cmd" in run:
        fields["cp2k_cmd"] = run["cp2k_cmd"]
    if "max_errors" in run:
        fields["custodian_max_errors"] = run["max_errors"]
    return _validated(Cp2kReference, {**fields, "input_updates": settings})


def _from_vasp_maker(maker) -> VaspReference:
    from atomate2.vasp.sets.core import StaticSetGenerator

    _check_maker(maker, StaticSetGenerator,
                 {"user_incar_settings", "user_kpoints_settings", "user_potcar_functional"}, "run_vasp_kwargs",
                 {"vasp_cmd", "vasp_gamma_cmd", "max_errors"})
    generator = maker.input_set_generator
    incar = dict(generator.user_incar_settings or {})
    fields: dict[str, Any] = {name: incar.pop(tag) for tag, name in _VASP_FIELDS.items() if tag in incar}
    if "ISPIN" in incar:
        fields["spin_polarized"] = incar.pop("ISPIN") == 2
    fields["kpoints"] = _grid(generator.user_kpoints_settings, gamma_only=True)
    fields["potcar_functional"] = generator.user_potcar_functional
    run = maker.run_vasp_kwargs
    fields.update({key: run[key] for key in ("vasp_cmd", "vasp_gamma_cmd") if key in run})
    if "max_errors" in run:
        fields["custodian_max_errors"] = run["max_errors"]
    return _validated(VaspReference, {**fields, "incar_updates": incar})


def _from_ase_maker(maker) -> AseReference:
    """An atomate2 ASE single-point maker (``steps`` 1, e.g. ``LennardJonesStaticMaker``): its calculator's
    class and ``calculator_kwargs``."""
    if getattr(maker, "steps", 1) > 1:
        raise ConfigError(f"reference_maker: {type(maker).__name__} relaxes (steps={maker.steps}); give a single "
                          "point (steps=1, e.g. LennardJonesStaticMaker) or an ASE calculator")
    kwargs = dict(getattr(maker, "calculator_kwargs", {}) or {})
    try:
        kwargs = json.loads(json.dumps(kwargs))
    except TypeError as err:
        raise ConfigError(f"reference_maker: calculator_kwargs of {type(maker).__name__} are not plain data ({err})"
                          ) from None
    return AseReference(calculator=_import_path(type(maker.calculator)), kwargs=kwargs)
