"""Physical benchmarks of a stored model (seed 001, Sec. V B): what the flows of
:mod:`otf_flows.jobs.physical_flow` need from the store and the user: the model as an ASE calculator
for atomate2's force-field jobs, the benchmark structure, the campaign's settings and starting cell."""

from __future__ import annotations

import logging
from pathlib import Path

from otf_flows.campaign import PHYSICAL_PROPERTIES, CampaignConfig
from otf_flows.errors import InputError
from otf_flows.store import OtfStore
from otf_flows.structures import build_structure
from otf_flows.validation.evaluate import model_calculator

logger = logging.getLogger(__name__)

__all__ = ["PHYSICAL_PROPERTIES", "campaign_context", "force_field", "load_structure", "stored_model_calculator"]


def stored_model_calculator(store: str, model_id: str, cache_dir: str | None = None):
    """The ASE calculator of a stored model of any backend: what atomate2's force-field jobs call.

    Given to atomate2 as ``force_field_name={"@module": "otf_flows.validation.physical", "@callable":
    "stored_model_calculator"}`` with ``calculator_kwargs={"store": ..., "model_id": ...}``; the model is
    extracted from the store on the node that runs the job.
    """
    return model_calculator(OtfStore(store), model_id, cache_dir)


def force_field(store: str, model_id: str, cache_dir: str | None = None) -> dict:
    """``force_field_name`` and ``calculator_kwargs`` of atomate2's force-field makers for a stored model."""
    kwargs = {"store": store, "model_id": model_id}
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    return {"force_field_name": {"@module": "otf_flows.validation.physical", "@callable": "stored_model_calculator"},
            "calculator_kwargs": kwargs}


def load_structure(path) -> "Structure":  # noqa: F821 - pymatgen is imported lazily
    """A pymatgen ``Structure`` from a file that pymatgen or ASE reads; InputError otherwise."""
    from pymatgen.core import Structure

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--structure: {str(path)!r} does not exist")
    try:
        return Structure.from_file(path)
    except Exception:  # noqa: BLE001 - fall back on ASE's readers (extxyz, ...)
        pass
    try:
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = read(path)
        if not atoms.pbc.all():
            raise InputError(f"--structure: {path} is not a periodic crystal (pbc={atoms.pbc.tolist()})")
        return AseAtomsAdaptor.get_structure(atoms)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001
        raise InputError(f"--structure: cannot read {path} as a structure ({type(err).__name__}: {err})") from None


def campaign_context(store, model_id: str):
    """The model's campaign configuration and the campaign's starting cell (None, None without a campaign)."""
    model = store.get_model(model_id)
    doc = store.get_campaign(model.campaign) if model.campaign else None
    if doc is None:
        return None, None
    config = CampaignConfig.model_validate(doc.config)
    try:
        cell = build_structure(config.structure).cell[:]
    except Exception:  # noqa: BLE001 - the starting file moved: the first labelled frame has the same cell
        frames = store.frames_of(model.campaign)
        cell = frames[0].cell if frames else None
    return config, cell
