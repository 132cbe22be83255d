"""Settings of a physical benchmark (``validation.physical`` in the campaign YAML); pydantic only, so that
:mod:`otf_flows.campaign` can import it (the flows are in :mod:`otf_flows.validation.physical`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from otf_flows._config_base import Strict

__all__ = ["PROPERTIES", "PhysicalBenchmark"]

PROPERTIES = ("eos", "phonons", "elastic")


class PhysicalBenchmark(Strict):
    """One physical benchmark of the campaign's final model against its DFT reference (``validation.physical``)."""

    property: Literal["eos", "phonons", "elastic"] = Field(
        description="eos (energy-volume curve, Birch-Murnaghan bulk modulus), phonons (phonopy band structure "
        "and DOS) or elastic (clamped-ion elastic tensor).")
    structure: str = Field(description="Structure file (cif, POSCAR, extxyz, ...; relative to the YAML), e.g. a "
                           "primitive diamond Si cell.")
    label: str | None = Field(None, description="Name of the benchmark in the store (default: the file's stem).")
    dft: bool = Field(True, description="Also compute the property with the campaign's reference (DFT).")
    kpoints: tuple[int, int, int] | None = Field(
        None, description="k-point grid of the DFT single points; null: the reference's k-point density carried "
        "over to the benchmark cell (finest spacing of reference.kpoints on the campaign's starting cell).")
    supercell: tuple[int, int, int] = Field((2, 2, 2), description="phonons: supercell of the structure (diagonal).")
    displacement_A: float = Field(0.01, gt=0, le=0.1, description="phonons: phonopy displacement (Å).")
    linear_strain: tuple[float, float] = Field((-0.03, 0.03), description="eos: range of the linear strain of "
                                               "the cell (fractions; ±0.03 is ±9 % in volume).")
    n_points: int = Field(7, ge=5, le=15, description="eos: strained cells (energies per curve).")

    @field_validator("linear_strain")
    @classmethod
    def _strain(cls, v):
        if not -0.2 <= v[0] < v[1] <= 0.2:
            raise ValueError("must be two fractions low < high within -0.2..0.2")
        return v
