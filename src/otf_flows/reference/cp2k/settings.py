"""CP2K reference settings (the YAML's ``reference: {engine: cp2k, ...}`` block).

Only pydantic here: :mod:`otf_flows.campaign` imports this module, the engine itself
(:mod:`otf_flows.reference.cp2k.engine`) imports atomate2 lazily.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from otf_flows.reference.settings import kpoint_words
from otf_flows.yaml_config import Strict

__all__ = ["Cp2kReference"]

_ELEMENT = re.compile(r"^[A-Z][a-z]?$")


class Cp2kReference(Strict):
    """CP2K through atomate2's StaticMaker and custodian, with fast MD-checking defaults.

    The defaults (PBE, DZVP-MOLOPT-SR-GTH/GTH-PBE, 300/50 Ry, Γ point, restricted
    Kohn-Sham, diagonalisation with 1000 K Fermi-Dirac smearing) label 8 Si atoms in
    10-25 s on two cores; they are a checking level of theory, not a converged one.
    """

    engine: Literal["cp2k"] = Field("cp2k", description="Reference engine: CP2K via atomate2 and custodian.")
    retries: int = Field(1, ge=0, description="Extra attempts after a failed reference calculation.")

    cp2k_cmd: str = Field(
        "cp2k.psmp",
        description="Command running CP2K, split like a shell would (no pipes or redirection), "
        "e.g. 'cp2k.psmp' or 'mpirun -np 4 cp2k.psmp'; custodian appends '-i cp2k.inp'. "
        "{ntasks} and {nodes} are the batch allocation's task and node counts, e.g. 'srun -n {ntasks} cp2k.psmp' "
        "or 'mpirun -np {ntasks} cp2k.psmp' (see docs/tutorials/cluster.md). "
        "A bare cp2k.psmp/cp2k not on PATH falls back to the other usual CP2K names. "
        "Not part of the labels' identity: may change on --resume.",
    )
    omp_threads: int | None = Field(
        None, ge=1, description="OMP_NUM_THREADS of the CP2K process (threads); execution.dft.omp_threads, when "
        "set, comes first; null leaves the environment's."
    )
    custodian_max_errors: int = Field(
        5,
        ge=1,
        description="Errors custodian's CP2K handlers may correct within one attempt (count); "
        "custodian gives up when this many have occurred.",
    )

    xc_functional: str = Field(
        "PBE", description="Exchange-correlation functional as a CP2K XC_FUNCTIONAL section name: PBE, BLYP, LDA, ..."
    )
    basis_set: str = Field(
        "DZVP-MOLOPT-SR-GTH", description="Gaussian basis set of every element not in basis_set_by_element."
    )
    basis_set_by_element: dict[str, str] = Field(
        default_factory=dict, description="Per-element basis set names, e.g. {O: TZVP-MOLOPT-GTH}."
    )
    potential: str = Field(
        "GTH-PBE",
        description="GTH pseudopotential of every element not in potential_by_element; match it to "
        "xc_functional (GTH-BLYP for BLYP).",
    )
    potential_by_element: dict[str, str] = Field(
        default_factory=dict, description="Per-element pseudopotential names, e.g. {Fe: GTH-PBE-q16}."
    )

    cutoff_Ry: float = Field(300.0, gt=0, description="Plane-wave cutoff of the finest multigrid (Ry).")
    rel_cutoff_Ry: float = Field(
        50.0, gt=0, description="Relative cutoff mapping Gaussians onto multigrid levels (Ry)."
    )
    ngrids: int = Field(4, ge=1, description="Number of multigrid levels (count).")
    eps_default: float = Field(
        1e-10, gt=0, description="QS EPS_DEFAULT: overall screening tolerance of Quickstep (Hartree)."
    )
    kpoints: tuple[int, int, int] = Field(
        (1, 1, 1),
        description="Monkhorst-Pack k-point grid (divisions along a, b, c; CP2K's MONKHORST-PACK scheme, "
        "time-reversal reduction only); [1, 1, 1] is the Γ point only, without a KPOINTS section.",
    )
    electronic_temperature_K: float | None = Field(
        1000.0,
        gt=0,
        description="Fermi-Dirac smearing temperature (K); null turns smearing off. The SCF always "
        "uses diagonalisation (not OT), so metals and small-gap frames converge.",
    )
    uks: bool = Field(
        False, description="Unrestricted (spin-polarised) Kohn-Sham; false is restricted Kohn-Sham (RKS)."
    )

    eps_scf: float = Field(
        1e-6, gt=0, description="SCF convergence: largest change of the density matrix (dimensionless)."
    )
    max_scf: int = Field(100, ge=1, description="Maximum number of SCF iterations (count).")
    mixing_method: Literal["BROYDEN_MIXING", "PULAY_MIXING", "KERKER_MIXING", "DIRECT_P_MIXING"] = Field(
        "BROYDEN_MIXING", description="Density mixing scheme of the SCF."
    )
    mixing_alpha: float = Field(0.4, gt=0, le=1, description="Mixing fraction of the new density (dimensionless).")
    mixing_nbuffer: int = Field(8, ge=1, description="Broyden/Pulay history length (SCF iterations).")
    mixing_beta: float | None = Field(
        None,
        gt=0,
        description="Kerker damping of the Broyden/Pulay mixing, CP2K's BETA (1/bohr); null keeps "
        "atomate2's 0.01 (no damping). 1.5 took liquid Si64 from 39 to 18 SCF steps and Si32 from 22 "
        "to 16, at the same energy (benchmarks/README.md, speed-up).",
    )

    input_updates: dict[str, Any] = Field(
        default_factory=dict,
        description="Expert overrides, merged last into atomate2's user_input_settings (keywords of "
        "pymatgen's DftSet); raw CP2K sections go under override_default_params, e.g. "
        "{override_default_params: {FORCE_EVAL: {DFT: {QS: {EPS_PGF_ORB: 1.0e-8}}}}}.",
    )

    @field_validator("basis_set_by_element", "potential_by_element")
    @classmethod
    def _element_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [key for key in value if not _ELEMENT.match(key)]
        if bad:
            raise ValueError(f"keys must be element symbols like 'Si', got {bad}")
        return value

    @field_validator("kpoints")
    @classmethod
    def _positive_kpoints(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"k-point divisions must be >= 1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _cutoffs(self):
        if self.rel_cutoff_Ry >= self.cutoff_Ry:
            raise ValueError(f"rel_cutoff_Ry ({self.rel_cutoff_Ry}) must be < cutoff_Ry ({self.cutoff_Ry})")
        return self

    @staticmethod
    def level_of_theory(reference: dict) -> list[str]:
        """Words of the level of theory of stored settings: functional, basis set, potential, cutoff (and
        per-element basis sets, smearing, UKS, k-points when set)."""
        parts = [reference.get("xc_functional"), reference.get("basis_set"), reference.get("potential"),
                 f"{reference.get('cutoff_Ry'):g} Ry"]
        parts += [f"{e}:{b}" for e, b in sorted((reference.get("basis_set_by_element") or {}).items())]
        if reference.get("electronic_temperature_K"):
            parts.append(f"smearing {reference['electronic_temperature_K']:g} K")
        if reference.get("uks"):
            parts.append("UKS")
        return [*parts, *kpoint_words(reference.get("kpoints"))]
