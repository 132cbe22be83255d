"""Model against DFT on physical properties (pure): EOS fits, phonon band structures, elastic tensors,
and the k-point grid of a small benchmark cell.

Inputs are the outputs of atomate2's flows (``ForceFieldEosMaker``/``CommonEosMaker`` EOS outputs,
``PhononBSDOSDoc``, ``ElasticDocument``), either as objects or as the dicts a store returns.
"""

from __future__ import annotations

import math

import numpy as np

from otf_flows.schemas.documents import now

__all__ = ["adapted_kpoints", "elastic_side", "eos_fit", "eos_range_notes", "eos_side", "phonon_side",
           "physical_document"]


def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _as_object(value, cls):
    """``value`` as ``cls`` (a monty/pydantic dict from a store is turned back into the object)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value)
    return value


def adapted_kpoints(reference_kpoints, reference_cell, cell) -> tuple[int, int, int]:
    """A Monkhorst-Pack grid for ``cell`` with at least the k-point density of ``reference_kpoints`` on
    ``reference_cell``: the finest spacing |b_i|/k_i of the reference grid (reciprocal vectors b_i,
    2π included) is kept along every direction of ``cell``, n_i = ceil(|b_i| / spacing)."""
    ref_rec = 2 * np.pi * np.linalg.inv(np.asarray(reference_cell, dtype=float)).T
    spacing = min(np.linalg.norm(ref_rec[i]) / max(int(reference_kpoints[i]), 1) for i in range(3))
    rec = 2 * np.pi * np.linalg.inv(np.asarray(cell, dtype=float)).T
    return tuple(max(1, math.ceil(np.linalg.norm(rec[i]) / spacing - 1e-9)) for i in range(3))


def eos_fit(volumes_per_atom, energies_per_atom) -> dict | None:
    """Birch-Murnaghan fit (pymatgen) of E(V) per atom: ``v0_per_atom`` (Å³), ``b0_GPa``, ``b1`` (B'),
    ``e0_per_atom`` (eV); None with fewer than four points or when the fit fails."""
    from pymatgen.analysis.eos import EOS

    if len(volumes_per_atom) < 4:
        return None
    try:
        fit = EOS("birch_murnaghan").fit(list(volumes_per_atom), list(energies_per_atom))
    except Exception:  # noqa: BLE001 - a curve without a minimum in range
        return None
    return {"v0_per_atom": float(fit.v0), "b0_GPa": float(fit.b0_GPa), "b1": float(fit.b1),
            "e0_per_atom": float(fit.e0)}


def eos_side(result, n_atoms: int) -> dict:
    """Volumes and energies per atom of an atomate2 EOS flow output (its ``relax`` job type) and their fit."""
    data = _get(result, "relax") or {}
    volumes = np.asarray(_get(data, "volume", []), dtype=float) / n_atoms
    energies = np.asarray(_get(data, "energy", []), dtype=float) / n_atoms
    order = np.argsort(volumes)
    volumes, energies = volumes[order], energies[order]
    return {"volumes_per_atom": volumes.tolist(), "energies_per_atom": energies.tolist(),
            "fit": eos_fit(volumes, energies)}


def phonon_side(doc) -> dict:
    """Band structure (THz, along the stored path) and DOS of an atomate2 ``PhononBSDOSDoc``."""
    from pymatgen.phonon.bandstructure import PhononBandStructureSymmLine
    from pymatgen.phonon.dos import PhononDos

    bs = _as_object(_get(doc, "phonon_bandstructure"), PhononBandStructureSymmLine)
    dos = _as_object(_get(doc, "phonon_dos"), PhononDos)
    labels = []
    for i, q in enumerate(bs.qpoints):
        if q.label and (not labels or labels[-1][1] != q.label or abs(labels[-1][0] - bs.distance[i]) > 1e-8):
            name = "Γ" if q.label in ("GAMMA", "\\Gamma", "G") else q.label
            labels.append((float(bs.distance[i]), name))
    return {
        "band_distances": [float(x) for x in bs.distance],
        "band_frequencies_THz": np.asarray(bs.bands, dtype=float).T.tolist(),
        "qpoints": [q.frac_coords.tolist() for q in bs.qpoints],
        "band_labels": labels,
        "dos_frequencies_THz": np.asarray(dos.frequencies, dtype=float).tolist(),
        "dos_density": np.asarray(dos.densities, dtype=float).tolist(),
        "has_imaginary_modes": bool(_get(doc, "has_imaginary_modes", False)),
        "supercell_matrix": np.asarray(_get(doc, "supercell_matrix"), dtype=float).tolist(),
    }


def elastic_side(doc) -> dict:
    """The 6x6 elastic tensor (IEEE, GPa) and the Voigt-Reuss-Hill moduli of an atomate2 ``ElasticDocument``."""
    tensor = _get(doc, "elastic_tensor")
    ieee = _get(tensor, "ieee_format")
    derived = _get(doc, "derived_properties")
    return {"elastic_tensor_GPa": np.asarray(ieee, dtype=float).round(6).tolist(),
            "k_vrh_GPa": _get(derived, "k_vrh"), "g_vrh_GPa": _get(derived, "g_vrh")}


def _summary_row(model, dft, unit: str) -> dict:
    return {"model": None if model is None else round(float(model), 6),
            "dft": None if dft is None else round(float(dft), 6), "unit": unit}


def _diff(a, b):
    return None if a is None or b is None else float(a) - float(b)


def _compare_eos(model: dict, dft: dict | None) -> tuple[dict, dict]:
    m, d = model.get("fit") or {}, (dft or {}).get("fit") or {}
    summary = {"bulk modulus B": _summary_row(m.get("b0_GPa"), d.get("b0_GPa"), "GPa"),
               "B'": _summary_row(m.get("b1"), d.get("b1"), ""),
               "equilibrium volume V0": _summary_row(m.get("v0_per_atom"), d.get("v0_per_atom"), "Å³/atom")}
    diffs = {"b0_GPa": _diff(m.get("b0_GPa"), d.get("b0_GPa")), "b1": _diff(m.get("b1"), d.get("b1")),
             "v0_per_atom_A3": _diff(m.get("v0_per_atom"), d.get("v0_per_atom"))}
    if dft and len(model["energies_per_atom"]) == len(dft["energies_per_atom"]) and \
            np.allclose(model["volumes_per_atom"], dft["volumes_per_atom"], rtol=1e-6):
        # the same structures: energy differences relative to each curve's lowest point
        em = np.asarray(model["energies_per_atom"]) - min(model["energies_per_atom"])
        ed = np.asarray(dft["energies_per_atom"]) - min(dft["energies_per_atom"])
        diffs["relative_energy_rmse_meV_per_atom"] = float(1000 * np.sqrt(np.mean((em - ed) ** 2)))
    return summary, diffs


def eos_range_notes(model: dict | None, dft: dict | None) -> list[str]:
    """A note for each side whose fitted V0 lies outside its sampled volumes (V0 and B extrapolated)."""
    notes = []
    for side, data in (("model", model), ("DFT", dft)):
        fit = (data or {}).get("fit")
        if not fit or not data.get("volumes_per_atom"):
            continue
        low, high = min(data["volumes_per_atom"]), max(data["volumes_per_atom"])
        if not low <= fit["v0_per_atom"] <= high:
            notes.append(f"{side}: the fitted V0 {fit['v0_per_atom']:.4g} Å³/atom lies outside the sampled volumes "
                         f"{low:.4g}-{high:.4g} Å³/atom, so its V0 and B are extrapolated (sample a wider strain "
                         "range around it for a converged B)")
    return notes


def compare_phonons(model: dict, dft: dict | None) -> tuple[dict, dict]:
    """Summary rows and differences (model − DFT) of two :func:`phonon_side` results: the band frequencies
    q-point by q-point and branch by branch (imaginary modes count as negative frequencies)."""
    return _compare_phonons(model, dft)


def _compare_phonons(model: dict, dft: dict | None) -> tuple[dict, dict]:
    fm = np.asarray(model["band_frequencies_THz"])
    summary = {"highest frequency": _summary_row(fm.max(), None, "THz"),
               "lowest frequency (< 0: imaginary modes)": _summary_row(fm.min(), None, "THz")}
    if not dft:
        return summary, {}
    fd = np.asarray(dft["band_frequencies_THz"])
    summary["highest frequency"] = _summary_row(fm.max(), fd.max(), "THz")
    summary["lowest frequency (< 0: imaginary modes)"] = _summary_row(fm.min(), fd.min(), "THz")
    gamma = [i for i, q in enumerate(model["qpoints"]) if np.allclose(q, 0)]
    if gamma:
        summary["highest frequency at Γ"] = _summary_row(fm[gamma[0]].max(), fd[gamma[0]].max(), "THz")
    if fm.shape != fd.shape or not np.allclose(model["qpoints"], dft["qpoints"], atol=1e-6):
        return summary, {"note": "model and DFT band paths differ: no point-by-point comparison"}
    delta = fm - fd
    return summary, {"frequency_rmse_THz": float(np.sqrt(np.mean(delta**2))),
                     "frequency_mae_THz": float(np.mean(np.abs(delta))),
                     "frequency_max_abs_THz": float(np.abs(delta).max()),
                     "n_qpoints": int(fm.shape[0]), "n_branches": int(fm.shape[1])}


def _compare_elastic(model: dict, dft: dict | None) -> tuple[dict, dict]:
    cm = np.asarray(model["elastic_tensor_GPa"])
    summary = {f"C{i + 1}{j + 1}": _summary_row(cm[i, j], None, "GPa") for i, j in ((0, 0), (0, 1), (3, 3))}
    summary["K_VRH"] = _summary_row(model["k_vrh_GPa"], None, "GPa")
    summary["G_VRH"] = _summary_row(model["g_vrh_GPa"], None, "GPa")
    if not dft:
        return summary, {}
    cd = np.asarray(dft["elastic_tensor_GPa"])
    for i, j in ((0, 0), (0, 1), (3, 3)):
        summary[f"C{i + 1}{j + 1}"] = _summary_row(cm[i, j], cd[i, j], "GPa")
    summary["K_VRH"] = _summary_row(model["k_vrh_GPa"], dft["k_vrh_GPa"], "GPa")
    summary["G_VRH"] = _summary_row(model["g_vrh_GPa"], dft["g_vrh_GPa"], "GPa")
    delta = cm - cd
    significant = np.abs(cd) > 1.0
    return summary, {"c11_GPa": float(delta[0, 0]), "c12_GPa": float(delta[0, 1]), "c44_GPa": float(delta[3, 3]),
                     "tensor_rms_GPa": float(np.sqrt(np.mean(delta[significant] ** 2))) if significant.any() else None,
                     "tensor_max_abs_GPa": float(np.abs(delta).max()),
                     "k_vrh_GPa": _diff(model["k_vrh_GPa"], dft["k_vrh_GPa"]),
                     "g_vrh_GPa": _diff(model["g_vrh_GPa"], dft["g_vrh_GPa"])}


def physical_document(prop: str, label: str, structure, model_result, dft_result, settings: dict) -> dict:
    """The stored result of one benchmark: both sides, a summary table, differences (model − DFT), notes."""
    from pymatgen.core import Structure

    structure = _as_object(structure, Structure)
    n_atoms = len(structure)
    if prop == "eos":
        model, dft = eos_side(model_result, n_atoms), (eos_side(dft_result, n_atoms) if dft_result else None)
        summary, diffs = _compare_eos(model, dft)
    elif prop == "phonons":
        model, dft = phonon_side(model_result), (phonon_side(dft_result) if dft_result else None)
        summary, diffs = _compare_phonons(model, dft)
    elif prop == "elastic":
        model, dft = elastic_side(model_result), (elastic_side(dft_result) if dft_result else None)
        summary, diffs = _compare_elastic(model, dft)
    else:
        raise ValueError(f"property {prop!r} is not one of eos, phonons, elastic")
    return {
        "property": prop, "label": label, "formula": structure.composition.reduced_formula, "n_atoms": n_atoms,
        "structure": structure.as_dict(), "settings": settings, "model": model, "dft": dft,
        "summary": summary, "differences": diffs,
        "notes": list(settings.get("notes", [])) + (eos_range_notes(model, dft) if prop == "eos" else []),
        "supercell_matrix": settings.get("supercell_matrix"),
        "created_at": now().isoformat(), "schema_version": 1,
    }
