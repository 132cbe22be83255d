"""Jobs of the physical benchmarks: a DFT single point with the campaign's reference engine, shaped like
an atomate2 static task so atomate2's EOS, phonon and elastic flows can use it, and the job that
compares a model's and DFT's results and stores them with the model."""

from __future__ import annotations

import logging
import time
import uuid as uuid_mod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jobflow import Maker, job

from otf_flows.campaign import CampaignConfig
from otf_flows.jobs.base import open_store
from otf_flows.jobs.reference import reference_engine
from otf_flows.validation.physical_analysis import physical_document
from otf_flows.validation.sets import save_validation

logger = logging.getLogger(__name__)

__all__ = ["RecordPhysicalMaker", "ReferenceStaticMaker", "stress_kbar"]


def stress_kbar(virial, volume: float) -> list[list[float]] | None:
    """atomate2's stress convention (kbar, positive under compression, as VASP and its ASE task documents)
    from a virial (eV) and the cell volume (Å³): ``virial / volume`` in kbar."""
    from ase.units import GPa

    if virial is None:
        return None
    return (np.asarray(virial, dtype=float) / volume / GPa * 10.0).tolist()


@dataclass
class ReferenceStaticMaker(Maker):
    """One single point with the campaign's reference engine (CP2K through atomate2's ``StaticMaker`` and
    custodian, VASP, or an ASE calculator) at the campaign's reference settings, except ``kpoints``
    when set (the k-point grid adapted to a small benchmark cell).

    The output has the fields atomate2's EOS, phonon and elastic flows read from a static task:
    ``output.energy`` (eV), ``output.forces`` (eV/Å), ``output.stress`` (kbar, atomate2's sign),
    ``output.structure``, ``structure``, ``dir_name`` and ``uuid``. Route it as a ``dft`` job.
    """

    name: str = "dft single point"
    config: CampaignConfig | None = None
    kpoints: tuple[int, int, int] | None = None

    @job
    def make(self, structure, prev_dir=None):
        """Label ``structure`` (a pymatgen ``Structure``); ``prev_dir`` is accepted for atomate2 and unused."""
        from pymatgen.io.ase import AseAtomsAdaptor

        config = self.config
        if self.kpoints is not None and hasattr(config.reference, "kpoints"):
            config = config.model_copy(update={"reference": config.reference.model_copy(
                update={"kpoints": tuple(self.kpoints)})})
        atoms = AseAtomsAdaptor.get_atoms(structure)
        workdir = Path.cwd()
        start = time.perf_counter()
        labels = reference_engine(config).label(atoms, workdir / "reference")
        seconds = time.perf_counter() - start
        stress = stress_kbar(labels.virial, atoms.get_volume())
        logger.info("dft single point of %s (%d atoms): %.6f eV in %.1f s", structure.composition.reduced_formula,
                    len(atoms), labels.energy, seconds)
        kpoints = list(getattr(config.reference, "kpoints", []) or []) or None
        return {
            "output": {"energy": float(labels.energy), "energy_per_atom": float(labels.energy) / len(atoms),
                       "forces": np.asarray(labels.forces, dtype=float).tolist(), "stress": stress,
                       "structure": structure},
            "structure": structure,
            "dir_name": str(workdir),
            "uuid": str(uuid_mod.uuid4()),
            "seconds": seconds,
            "engine": config.reference.engine,
            "kpoints": kpoints,
        }


@dataclass
class RecordPhysicalMaker(Maker):
    """Compare a model's and DFT's results of one physical benchmark and store them with the model
    (validation ``"<model_id>:physical:<property>:<label>"``). Route it as a ``light`` job."""

    name: str = "record physical benchmark"

    @job
    def make(self, store: str, model_id: str, prop: str, label: str, structure, model_result, dft_result,
             settings: dict):
        st = open_store(store)
        model = st.get_model(model_id)
        doc = physical_document(prop, label, structure, model_result, dft_result, settings)
        doc.update(validation_id=f"{model_id}:physical:{prop}:{label}", model_id=model_id, campaign=model.campaign,
                   benchmark=f"physical:{prop}:{label}", kind="physical")
        save_validation(st, doc)
        return {k: doc[k] for k in ("validation_id", "property", "differences", "summary")}
