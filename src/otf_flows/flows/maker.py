"""The campaign as an atomate2-style Maker: ``OtfMDMaker(...).make(structure)`` returns a jobflow ``Flow``.

The Maker's fields are the campaign YAML's blocks, as the same pydantic models
(:class:`~otf_flows.campaign.MDSettings`, :class:`~otf_flows.campaign.Tolerances`, ...) or plain
mappings of them; ``reference_maker`` is an atomate2 CP2K/VASP static Maker, an ASE calculator or
a reference block (:mod:`otf_flows.reference.from_maker`); the structure is the argument of ``make``.
The flow's first job registers the campaign in the store (the rules of ``otf run``: a new name,
or the resume rules with ``resume``); every job's Maker carries the campaign's settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Flow, Maker, OutputReference, Response, job
from monty.json import MontyDecoder
from pydantic import TypeAdapter, ValidationError

from otf_flows.campaign import (
    AdaptiveMethodParameters,
    CampaignConfig,
    ExecutionSettings,
    MDSettings,
    ModelSettings,
    Refit,
    StructureAtoms,
    StructureBuilder,
    StructureFile,
    Tolerances,
    UncertaintySettings,
    ValidationSettings,
    config_from_dict,
    load_config,
    store_reference,
)
from otf_flows.errors import ConfigError
from otf_flows.flows.graph import campaign_flow
from otf_flows.flows.lifecycle import prepare_campaign
from otf_flows.jobs.base import open_store
from otf_flows.jobs.routing import route
from otf_flows.reference.from_maker import reference_from_maker
from otf_flows.settings import otf_settings
from otf_flows.store import OtfStore, resolve_location
from otf_flows.settings import otf_settings
from otf_flows.structures import structure_spec
from otf_flows.walkers import WalkerGrid, WalkerSpec
from otf_flows.yaml_config import absolute_path, error_line

__all__ = ["OtfMDMaker", "RegisterCampaignMaker"]

#: Maker fields holding a block of the campaign YAML (validated as CampaignConfig's field of that name)
_BLOCKS = ("md", "adaptive_method_parameters", "tolerances", "model", "refit", "uncertainty", "validation",
           "execution")
_STRUCTURE = TypeAdapter(StructureFile | StructureBuilder | StructureAtoms)
_WALKERS = TypeAdapter(list[WalkerSpec] | WalkerGrid)


def _default(key: str):
    """The default factory of CampaignConfig's block ``key``."""
    return lambda: CampaignConfig.model_fields[key].get_default(call_default_factory=True)


def _block(key: str) -> TypeAdapter:
    """A validator of CampaignConfig's block ``key`` (a model, or a tagged union such as ``model``)."""
    return TypeAdapter(CampaignConfig.model_fields[key].rebuild_annotation())


@dataclass
class OtfMDMaker(Maker):
    """On-the-fly machine-learned MD of a structure: ML-MD segments, reference checks, refits.

    Every field but ``reference_maker``, ``structure``, ``resume`` is the campaign YAML's key of
    the same name, with its defaults (``otf schema`` describes them); a block may be given as its
    pydantic model or as a mapping. :meth:`from_yaml` reads a campaign YAML.

    Parameters
    ----------
    name
        Campaign name, unique in the store (letters, digits, ``. _ -``); also the flow's name.
    reference_maker
        The reference: an atomate2 ``StaticMaker`` (CP2K or VASP), an ASE calculator class or
        instance, or a ``reference`` block; see :mod:`otf_flows.reference.from_maker` for what carries over.
    md, num_initial_steps, check_interval, adaptive_method_parameters, tolerances, can_update, \
rollback_on_fail, compat, model, refit, uncertainty, validation, execution
        The campaign's settings (:class:`~otf_flows.campaign.CampaignConfig`); ``rollback_on_fail`` None
        takes the campaign's default (``compat: hybrid-md``: false).
    structure
        Starting structure used when :meth:`make` gets none (a YAML's ``structure`` block).
    store
        Store location (directory, ``mongodb://`` URI, ``memory://NAME``); ``OTF_STORE`` beats it. The jobs
        receive it as an argument, resolved when the flow is made. None (and no ``OTF_STORE``): each job uses
        the store it runs in, as jobflow's jobs do (``run_locally(flow, store=OtfStore(LOCATION).jobstore)``).
    resume
        Continue the campaign of this name in the store (``otf run --resume``: only the
        settings the resume rules allow may differ); the campaign's jobs are then added by the
        first job, from the store's progress pointer.
    """

    name: str = "otf-md"
    reference_maker: Any = None
    md: MDSettings = field(default_factory=_default("md"))
    num_initial_steps: int = 0
    check_interval: int = 1
    adaptive_method_parameters: AdaptiveMethodParameters | None = None
    tolerances: Tolerances = field(default_factory=_default("tolerances"))
    can_update: bool = False
    rollback_on_fail: bool | None = None
    compat: str | None = None
    model: ModelSettings = field(default_factory=_default("model"))
    refit: Refit = field(default_factory=_default("refit"))
    uncertainty: UncertaintySettings = field(default_factory=_default("uncertainty"))
    validation: ValidationSettings = field(default_factory=_default("validation"))
    execution: ExecutionSettings = field(default_factory=_default("execution"))
    structure: StructureFile | StructureBuilder | StructureAtoms | None = None
    walkers: list[WalkerSpec] | WalkerGrid | None = None
    store: str | None = None
    resume: bool = False

    def __post_init__(self):
        for key in _BLOCKS:
            value = getattr(self, key)
            if isinstance(value, Mapping):
                setattr(self, key, _validated(_block(key), value, key))
        if isinstance(self.structure, Mapping):
            self.structure = _validated(_STRUCTURE, self.structure, "structure")
        if self.walkers is not None and not isinstance(self.walkers, WalkerGrid):
            self.walkers = _validated(_WALKERS, self.walkers, "walkers")
        if self.reference_maker is None:
            raise ConfigError("reference_maker: required (an atomate2 StaticMaker, an ASE calculator or a reference "
                              "block such as {'calculator': 'ase.calculators.emt.EMT'})")
        reference = reference_from_maker(self.reference_maker)  # refuses what cannot carry over, now
        if not isinstance(self.reference_maker, Maker):  # ASE calculators and mappings are kept as their block
            self.reference_maker = reference

    @classmethod
    def from_config(cls, config: CampaignConfig, **changes) -> OtfMDMaker:
        """The Maker of a validated campaign configuration (copied); ``changes`` replace fields."""
        config = config.model_copy(deep=True)
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
                  if f.name not in ("reference_maker", "resume")}
        return cls(**{**fields, "reference_maker": config.reference, **changes})

    @classmethod
    def from_yaml(cls, path: str | Path, **changes) -> OtfMDMaker:
        """The Maker of a campaign YAML (:func:`~otf_flows.campaign.load_config`: relative paths are
        resolved against the file's directory); ``changes`` replace fields, e.g. ``store=...``."""
        return cls.from_config(load_config(path), **changes)

    @property
    def reference(self):
        """The campaign's ``reference`` block for :attr:`reference_maker`."""
        return reference_from_maker(self.reference_maker)

    def campaign_config(self, structure=None) -> CampaignConfig:
        """The validated campaign configuration with starting ``structure`` (ASE ``Atoms``, a pymatgen
        ``Structure`` or a structure block; None: :attr:`structure`).

        Relative paths (``refit.previous_data``, ``structure.file``, ``execution.*_dir``) are
        resolved against the working directory. Raises :class:`ConfigError` (one line) on bad settings.
        A list of structures makes one walker per structure (:meth:`with_walkers`).
        """
        if isinstance(structure, (list, tuple)):
            return self.with_walkers(structure).campaign_config()
        block = self._structure_block(structure).model_dump(mode="json", exclude_unset=True)
        data = {"name": self.name, "structure": block, "reference": self.reference.model_dump(mode="json"),
                "store": self.store, "num_initial_steps": self.num_initial_steps,
                "check_interval": self.check_interval, "can_update": self.can_update}
        if self.rollback_on_fail is not None:  # None: the campaign's default (or its compat mode's)
            data["rollback_on_fail"] = self.rollback_on_fail
        if self.compat is not None:
            data["compat"] = self.compat
        if self.walkers is not None:
            data["walkers"] = (self.walkers.model_dump(mode="json") if isinstance(self.walkers, WalkerGrid)
                               else [w.model_dump(mode="json", exclude_unset=True) for w in self.walkers])
        for key in _BLOCKS:
            value = getattr(self, key)
            # only what was set: validators that look at the keys given (refit: e0 or e0_method) see the same
            data[key] = None if value is None else value.model_dump(mode="json", exclude_unset=True)
        return config_from_dict(data, base_dir=Path.cwd())

    def with_walkers(self, structures) -> OtfMDMaker:
        """This Maker with one walker per structure of ``structures`` (ASE ``Atoms``, pymatgen ``Structure``s or
        structure blocks): the walkers of :attr:`walkers` in order when it lists as many (their ``md`` and
        ``tolerances`` kept), else walkers named ``walker-1``, ``walker-2``, ...; the campaign's structure is the
        first."""
        if not structures:
            raise ConfigError("structure: make() got an empty list; give one structure per walker")
        blocks = [self._structure_block(s) for s in structures]
        given = self.walkers if isinstance(self.walkers, list) else None
        if given is not None and len(given) != len(blocks):
            raise ConfigError(f"walkers: the Maker has {len(given)} walkers and make() got {len(blocks)} structures; "
                              "give one structure per walker")
        specs = given or [WalkerSpec(name=f"walker-{i + 1}") for i in range(len(blocks))]
        walkers = [spec.model_copy(update={"structure": block.model_dump(mode="json", exclude_unset=True)})
                   for spec, block in zip(specs, blocks)]
        return dataclasses.replace(self, structure=blocks[0], walkers=walkers)

    def _absolute(self) -> OtfMDMaker:
        """This Maker with its relative paths (``refit.previous_data``, ``structure.file``,
        ``execution.cache_dir``/``scratch_dir``) made absolute against the working directory."""
        cwd = Path.cwd()
        previous = [item if store_reference(item) else absolute_path(item, cwd)
                    for item in self.refit.previous_data]  # store references stay (as config_from_dict)
        dirs = {key: absolute_path(getattr(self.execution, key), cwd) for key in ("cache_dir", "scratch_dir")
                if getattr(self.execution, key) is not None}
        changes = {"refit": self.refit.model_copy(update={"previous_data": previous}) if previous else self.refit,
                   "execution": self.execution.model_copy(update=dirs) if dirs else self.execution}
        if self.structure is not None:
            changes["structure"] = self._structure_block(self.structure)
        return dataclasses.replace(self, **changes)

    def _structure_block(self, structure):
        """``structure`` (None: :attr:`structure`) as a structure block of the campaign YAML."""
        if structure is None:
            structure = self.structure
        if structure is None:
            raise ConfigError("structure: none given to make() and the Maker has no structure")
        if isinstance(structure, Mapping) and "@class" in structure:  # serialised: a pymatgen Structure, a block
            structure = MontyDecoder().process_decoded(dict(structure))
        if isinstance(structure, Mapping):
            structure = _validated(_STRUCTURE, structure, "structure")
        if isinstance(structure, StructureFile):  # the same file wherever a job reads it
            return structure.model_copy(update={"file": absolute_path(structure.file, Path.cwd())})
        if isinstance(structure, (StructureBuilder, StructureAtoms)):
            return structure
        return structure_spec(structure)

    def location(self) -> str | None:
        """The store location the jobs get: ``OTF_STORE``, else :attr:`store`, a directory made absolute;
        None without either: each job uses the store it runs in (``CURRENT_JOB.store``)."""
        if not (otf_settings().store or self.store):
            return None
        st = OtfStore(resolve_location(None, self.store))
        return str(st.path) if st.kind == "embedded" else st.location

    def make(self, structure=None) -> Flow:
        """The campaign's flow for ``structure``: ASE ``Atoms``, a pymatgen ``Structure``, a structure
        block, or an ``OutputReference`` to one (e.g. ``relax.output.structure``); None: :attr:`structure`.
        A list of them makes one walker per structure (:meth:`with_walkers`), e.g. ``make([atoms_1500K,
        relax.output.structure])``.

        With a structure at hand (and no ``resume``) the whole initial graph is built now: register →
        initial reference MD → first fit → first iteration, each Maker carrying the settings. With an
        output reference (or ``resume``) the registering job builds it once the structure is known.
        """
        location = self.location()
        otf = self._absolute()  # the register job runs elsewhere (its job directory, a worker)
        listed = isinstance(structure, (list, tuple))
        if listed and not any(isinstance(s, OutputReference) for s in structure):
            otf, structure, listed = otf.with_walkers(structure), None, False
        if listed or isinstance(structure, OutputReference) or self.resume:
            if listed:
                structure = [s if isinstance(s, OutputReference) else otf._structure_block(s) for s in structure]
            elif not isinstance(structure, OutputReference):
                structure = otf._structure_block(structure)
            register = route(RegisterCampaignMaker(otf=otf, emit=True).make(location, structure), "light",
                             otf.execution)
            return Flow([register], name=self.name)
        config = otf.campaign_config(structure)  # bad settings fail here, before anything runs
        register = route(RegisterCampaignMaker(otf=otf).make(location, config.structure), "light", config.execution)
        return Flow([register, campaign_flow(config, location, after=register.output["campaign"])], name=self.name)


@dataclass
class RegisterCampaignMaker(Maker):
    """Register the campaign of ``otf`` in the store (``otf run``'s rules and input checks).

    With ``emit`` the job adds the campaign's jobs (the whole campaign, or its continuation with
    ``otf.resume``) through ``Response.addition``; otherwise they follow it in the same flow.
    """

    name: str = "register campaign"
    otf: OtfMDMaker | None = None
    emit: bool = False

    @job
    def make(self, store: str | None, structure=None):
        config = self.otf.campaign_config(structure)
        st = open_store(store)
        flow = prepare_campaign(config, st, resume=self.otf.resume)
        output = {"campaign": config.name, "store": store, "resumed": self.otf.resume}
        return Response(output=output, addition=flow) if self.emit else output


def _validated(model, value, key: str):
    try:
        return model.validate_python(value) if isinstance(model, TypeAdapter) else model.model_validate(value)
    except ValidationError as err:
        raise ConfigError(error_line(err, key)) from None
