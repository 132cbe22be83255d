"""GAP descriptor presets: the paper's (Table II) and the species-generic ``fast`` one (soap_turbo + a short two-body term).

The paper's Table II presets (:data:`PRESETS`) stay as they are; ``fast``
is our own, chosen by measurement (``benchmarks/gap_presets.py``, results in
``benchmarks/results/gap_presets.md``): a 5 Å two-body term plus one ``soap_turbo`` term per
central species. Measured on 2026-12-01 against the l-Si preset: 4.1-4.9x cheaper per force
call at 0.86-0.96x its force RMSE on unseen frames (CP2K liquid Si32 and Si16Ge16, EMT Cu-Au).

The strings are ``gap_fit`` descriptor strings: soap_turbo's per-species arrays sit in double
braces (``{{a b}}``) because gap_fit parses the whole ``gap={...}`` value first.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["FAST_SETTINGS", "PRESETS", "descriptor_for", "fast_descriptor", "preset_names"]

_SOAP = (
    "soap l_max={l_max} n_max={n_max} atom_sigma={atom_sigma} cutoff={cutoff} cutoff_transition_width=1.0 "
    "central_weight=1.0 delta={delta} covariance_type=dot_product zeta=4 n_sparse={n_sparse} "
    "sparse_method=cur_points add_species=T"
)
_TWO_BODY = (
    "distance_2b cutoff={cutoff} cutoff_transition_width=1.0 covariance_type=ard_se delta={delta} "
    "theta_uniform=1.0 sparse_method=uniform n_sparse={n_sparse} add_species=T"
)
_THREE_BODY = (
    "angle_3b cutoff={cutoff} cutoff_transition_width=0.5 covariance_type=ard_se delta={delta} "
    "theta_fac=0.5 sparse_method=uniform n_sparse={n_sparse} add_species=T"
)

#: Descriptor presets; l-si, al2o3 and a-c follow Table II of the paper.
PRESETS: dict[str, str] = {
    "default": " : ".join(
        [
            _TWO_BODY.format(cutoff=4.5, delta=0.5, n_sparse=15),
            _SOAP.format(l_max=3, n_max=6, atom_sigma=0.5, cutoff=4.0, delta=0.1, n_sparse=100),
        ]
    ),
    "l-si": " : ".join(
        [
            _TWO_BODY.format(cutoff=10.0, delta=1.0, n_sparse=30),
            _SOAP.format(l_max=4, n_max=12, atom_sigma=0.5, cutoff=5.0, delta=0.1, n_sparse=500),
        ]
    ),
    "al2o3": " : ".join(
        [
            _TWO_BODY.format(cutoff=4.5, delta=1.0, n_sparse=20),
            _SOAP.format(l_max=4, n_max=8, atom_sigma=0.4, cutoff=3.5, delta=0.1, n_sparse=1000),
        ]
    ),
    "a-c": " : ".join(
        [
            _TWO_BODY.format(cutoff=3.7, delta=2.0, n_sparse=15),
            _THREE_BODY.format(cutoff=3.0, delta=0.5, n_sparse=50),
            _SOAP.format(l_max=8, n_max=8, atom_sigma=0.5, cutoff=3.7, delta=0.1, n_sparse=200),
        ]
    ),
}

#: The fast preset's settings (keyword arguments of :func:`fast_descriptor`).
FAST_SETTINGS: dict[str, float | int] = {
    "cutoff_2b": 5.0,
    "delta_2b": 1.0,
    "n_sparse_2b": 20,
    "rcut": 5.0,
    "transition": 0.5,
    "l_max": 4,
    "alpha_max": 6,
    "atom_sigma": 0.5,
    "zeta": 4,
    "delta_soap": 0.1,
    "n_sparse": 300,
}


def _species(numbers: Iterable[int]) -> list[int]:
    species = sorted({int(z) for z in numbers})
    if not species:
        raise ValueError("numbers is empty: the fast preset needs the atomic numbers of the system")
    if any(z < 1 or z > 118 for z in species):
        raise ValueError(f"atomic numbers must be 1-118, got {species}")
    return species


def _array(values) -> str:
    return "{{" + " ".join(str(v) for v in values) + "}}"


def fast_descriptor(
    numbers: Iterable[int],
    *,
    cutoff_2b: float = FAST_SETTINGS["cutoff_2b"],
    delta_2b: float = FAST_SETTINGS["delta_2b"],
    n_sparse_2b: int = FAST_SETTINGS["n_sparse_2b"],
    rcut: float = FAST_SETTINGS["rcut"],
    transition: float = FAST_SETTINGS["transition"],
    l_max: int = FAST_SETTINGS["l_max"],
    alpha_max: int = FAST_SETTINGS["alpha_max"],
    atom_sigma: float = FAST_SETTINGS["atom_sigma"],
    zeta: int = FAST_SETTINGS["zeta"],
    delta_soap: float = FAST_SETTINGS["delta_soap"],
    n_sparse: int = FAST_SETTINGS["n_sparse"],
) -> str:
    """The ``fast`` preset's gap_fit descriptor string for a system of these atomic numbers.

    A ``distance_2b`` term (all species pairs, ``add_species=T``) and one ``soap_turbo`` term per
    central species, seeing every species of ``numbers`` (``add_species=F``: soap_turbo cannot
    add species itself). Repeated numbers are fine (``atoms.numbers`` works). The keyword
    arguments are for studies only; campaigns use the defaults (:data:`FAST_SETTINGS`).

    Examples
    --------
    >>> fast_descriptor([14, 14]).count("soap_turbo")
    1
    >>> fast_descriptor([29, 79]).count("central_index=")
    2
    """
    species = _species(numbers)
    if not 0 < transition < rcut:
        raise ValueError(f"transition ({transition}) must be between 0 and rcut ({rcut})")
    n = len(species)
    two_body = (
        f"distance_2b cutoff={cutoff_2b:g} cutoff_transition_width=1.0 covariance_type=ard_se delta={delta_2b:g} "
        f"theta_uniform=1.0 sparse_method=uniform n_sparse={n_sparse_2b} add_species=T"
    )
    terms = [two_body]
    for index in range(1, n + 1):
        terms.append(
            f"soap_turbo l_max={l_max} alpha_max={_array([alpha_max] * n)} "
            f"atom_sigma_r={_array([atom_sigma] * n)} atom_sigma_t={_array([atom_sigma] * n)} "
            f"atom_sigma_r_scaling={_array([0.0] * n)} atom_sigma_t_scaling={_array([0.0] * n)} "
            f"amplitude_scaling={_array([1.0] * n)} central_weight={_array([1.0] * n)} "
            f"rcut_hard={rcut:g} rcut_soft={rcut - transition:g} basis=poly3gauss scaling_mode=polynomial "
            f"radial_enhancement=1 compress_mode=trivial n_species={n} species_Z={_array(species)} "
            f"central_index={index} covariance_type=dot_product zeta={zeta} delta={delta_soap:g} "
            f"n_sparse={n_sparse} sparse_method=cur_points add_species=F"
        )
    return " : ".join(terms)


def preset_names() -> list[str]:
    """Every preset name ``descriptor_for`` knows: the paper's and ``fast``."""
    return [*PRESETS, "fast"]


def descriptor_for(preset: str, numbers: Iterable[int] | None = None) -> str:
    """The gap_fit descriptor string of ``preset`` (``fast`` needs the system's ``numbers``).

    Raises
    ------
    ValueError
        For an unknown preset, or ``fast`` without atomic numbers.
    """
    if preset == "fast":
        if numbers is None:
            raise ValueError("the fast preset is species-generic: pass the system's atomic numbers")
        return fast_descriptor(numbers)
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown GAP preset {preset!r}; known: {', '.join(preset_names())}") from None
