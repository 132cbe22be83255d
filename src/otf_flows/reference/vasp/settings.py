"""VASP reference settings (the YAML's ``reference: {engine: vasp, ...}`` block).

Only pydantic here: :mod:`otf_flows.campaign` imports this module, the engine itself
(:mod:`otf_flows.reference.vasp.engine`) imports atomate2 lazily.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from otf_flows.reference.settings import kpoint_words
from otf_flows.yaml_config import Strict

__all__ = ["VaspReference"]


class VaspReference(Strict):
    """VASP through atomate2's StaticMaker and custodian, with MD-checking INCAR settings.

    The INCAR is atomate2's static set with these fields on top (ENCUT, EDIFF, ISMEAR,
    SIGMA, GGA, ISPIN, NELM, Γ-centred k-points, no WAVECAR/CHGCAR/LOCPOT/AECCAR), then
    ``incar_updates``.
    """

    engine: Literal["vasp"] = Field("vasp", description="Reference engine: VASP via atomate2 and custodian.")
    retries: int = Field(1, ge=0, description="Extra attempts after a failed reference calculation.")

    vasp_cmd: str = Field(
        "vasp_std",
        description="Command running VASP, split like a shell would (no pipes or redirection), "
        "e.g. 'vasp_std' or 'srun vasp_std'; {ntasks} and {nodes} are the batch allocation's task and node "
        "counts, e.g. 'srun -n {ntasks} vasp_std'.",
    )
    vasp_gamma_cmd: str = Field(
        "vasp_gam",
        description="Command of the Γ-only VASP build, used for [1, 1, 1] k-points when its program is on "
        "PATH (custodian falls back to vasp_cmd otherwise).",
    )
    custodian_max_errors: int = Field(
        5, ge=1, description="Errors custodian's VASP handlers may correct within one attempt (count)."
    )

    encut_eV: float = Field(400.0, gt=0, description="Plane-wave cutoff ENCUT (eV).")
    ediff_eV: float = Field(1e-6, gt=0, description="Electronic convergence EDIFF, total energy change (eV).")
    nelm: int = Field(100, ge=1, description="Maximum number of electronic steps NELM (count).")
    ismear: Literal[-1, 0, 1, 2] = Field(
        0, description="Smearing ISMEAR: -1 Fermi-Dirac, 0 Gaussian, 1/2 Methfessel-Paxton order."
    )
    sigma_eV: float = Field(0.05, gt=0, description="Smearing width SIGMA (eV).")
    gga: str = Field("PE", description="GGA functional tag: PE (PBE), PS (PBEsol), RP (rPBE), ...")
    spin_polarized: bool = Field(
        False, description="Spin-polarised (ISPIN 2 with atomate2's initial MAGMOM) or not (ISPIN 1)."
    )
    kpoints: tuple[int, int, int] = Field(
        (1, 1, 1), description="Γ-centred k-point grid (divisions along a, b, c); [1, 1, 1] is the Γ point only."
    )
    potcar_functional: str | None = Field(
        None, description="POTCAR set, e.g. PBE_54 or PBE_64; null keeps atomate2's default (PBE_54)."
    )
    incar_updates: dict[str, Any] = Field(
        default_factory=dict,
        description="INCAR tags applied last (atomate2 user_incar_settings); a null value removes a tag.",
    )

    @field_validator("kpoints")
    @classmethod
    def _positive_kpoints(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"k-point divisions must be >= 1, got {list(value)}")
        return value

    @field_validator("incar_updates")
    @classmethod
    def _upper_case_tags(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [key for key in value if key != key.upper()]
        if bad:
            raise ValueError(f"INCAR tags are upper case, got {bad}")
        return value

    @staticmethod
    def level_of_theory(reference: dict) -> list[str]:
        """Words of the level of theory of stored settings: GGA tag, ENCUT, POTCAR functional (and spin,
        k-points when set)."""
        parts = [reference.get("gga"), f"ENCUT {reference.get('encut_eV'):g} eV", reference.get("potcar_functional")]
        if reference.get("spin_polarized"):
            parts.append("spin")
        return [*parts, *kpoint_words(reference.get("kpoints"))]
