"""The hole search as jobs of a graph: relax random structures with the model (an ``md`` job), then, on
request, DFT single points of the lowest flagged ones (``dft`` jobs) and their verdicts (a ``light`` job)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from jobflow import Flow, Maker, Response, job

from otf_flows.campaign import CampaignConfig, ExecutionSettings
from otf_flows.jobs.base import open_store
from otf_flows.jobs.physical import ReferenceStaticMaker
from otf_flows.jobs.routing import route
from otf_flows.structures import build_structure
from otf_flows.validation.holes import HoleSearch, add_dft, search, to_check
from otf_flows.validation.physical_analysis import adapted_kpoints
from otf_flows.validation.sets import get_validation, save_validation

logger = logging.getLogger(__name__)

__all__ = ["HoleSearchMaker", "RecordHolesMaker", "hole_search_flow"]


@dataclass
class HoleSearchMaker(Maker):
    """Relax random structures with a stored model and store the hole search; with ``settings.dft_check``
    and flagged structures, add their DFT single points and the job that records the verdicts."""

    name: str = "hole search"
    settings: HoleSearch = field(default_factory=HoleSearch)
    config: CampaignConfig | None = None

    @job
    def make(self, store: str, model_id: str):
        from pymatgen.core import Lattice, Structure

        st = open_store(store)
        doc = search(st, model_id, self.settings)
        save_validation(st, doc)
        summary = {k: doc[k] for k in ("validation_id", "n_structures", "n_flagged", "lowest_energy_per_atom",
                                       "dft_lowest_energy_per_atom")}
        picks = to_check(doc, self.settings.max_dft) if self.settings.dft_check else []
        if not picks:
            return summary
        if self.config is None:
            logger.warning("hole search of %s: no campaign, so no DFT reference for the flagged structures", model_id)
            return summary
        execution = self.config.execution
        reference_cell = build_structure(self.config.structure).cell[:]
        jobs, energies = [], {}
        for index in picks:
            row = doc["structures"][index]
            structure = Structure(Lattice(row["cell"]), row["numbers"], row["positions"], coords_are_cartesian=True)
            kpoints = None  # the reference's k-point density carried over to the relaxed cell
            if hasattr(self.config.reference, "kpoints"):
                kpoints = adapted_kpoints(self.config.reference.kpoints, reference_cell, row["cell"])
            single = route(ReferenceStaticMaker(name=f"dft single point of random structure {index}",
                                                config=self.config, kpoints=kpoints).make(structure), "dft", execution)
            jobs.append(single)
            energies[str(index)] = single.output["output"]["energy_per_atom"]
        record = route(RecordHolesMaker().make(store, model_id, energies), "light", execution)
        return Response(output=summary, addition=Flow([*jobs, record], name=f"DFT check of {len(picks)} flagged"))


@dataclass
class RecordHolesMaker(Maker):
    """Add the DFT energies per atom of flagged structures and their verdicts to the stored hole search."""

    name: str = "record hole verdicts"

    @job
    def make(self, store: str, model_id: str, energies: dict):
        st = open_store(store)
        doc = get_validation(st, model_id, "holes")
        doc = add_dft(doc, {int(k): float(v) for k, v in energies.items()})
        doc["dft_note"] = ("DFT single points with the campaign's reference settings, k-points at the reference's "
                           "density carried over to each relaxed cell")
        save_validation(st, doc)
        return {k: doc[k] for k in ("validation_id", "n_flagged", "n_dft_checked", "n_holes")}


def hole_search_flow(settings: HoleSearch, store: str, model_id: str, config: CampaignConfig | None = None) -> Flow:
    """The hole search of ``model_id`` as a flow (its search job routed as ``md``)."""
    search_job = HoleSearchMaker(settings=settings, config=config).make(store, model_id)
    route(search_job, "md", config.execution if config is not None else ExecutionSettings())
    return Flow([search_job], output=search_job.output, name=f"hole search of {model_id}")
