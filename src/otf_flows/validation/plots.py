"""Figures of model validations (cross-validation, learning curve, physical benchmarks, hole search).

Each function takes a stored validation document, writes one PNG with matplotlib's object API
(Agg canvas, no pyplot state) and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import FormatStrFormatter, NullFormatter

__all__ = ["plot_cv", "plot_eos", "plot_holes", "plot_learning_curve", "plot_phonons"]

MODEL, DFT = "tab:blue", "tab:red"
DPI = 130  # as the campaign report's figures


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_cv(doc: dict, path: Path) -> Path:
    """Per-fold energy and force RMSE of a k-fold cross-validation, with the pooled value and mean ± std."""
    fig = _figure(8.0, 3.2)
    axes = fig.subplots(1, 2)
    folds = doc["folds"]
    x = np.arange(1, len(folds) + 1)
    for ax, key, scale, label in ((axes[0], "energy_rmse_per_atom", 1000.0, "energy RMSE (meV/atom)"),
                                  (axes[1], "force_rmse", 1.0, "force RMSE (eV/Å)")):
        values = np.array([f[key] * scale for f in folds])
        ax.bar(x, values, color="tab:blue", alpha=0.75, label="held-out fold")
        spread = doc["spread"][key]
        ax.axhline(doc[key] * scale, color="k", lw=1.2, label=f"pooled {doc[key] * scale:.3g}")
        ax.axhspan((spread["mean"] - spread["std"]) * scale, (spread["mean"] + spread["std"]) * scale,
                   color="0.6", alpha=0.25,
                   label=f"mean ± std {spread['mean'] * scale:.3g} ± {spread['std'] * scale:.2g}")
        ax.set_xticks(x)
        ax.set_xlabel("fold")
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{doc['model_id']}: {doc['k']}-fold cross-validation on {sum(f['n_test'] for f in folds)} "
                 "training frames", fontsize=9)
    return _save(fig, path)


def plot_learning_curve(doc: dict, path: Path) -> Path:
    """Energy and force RMSE on the fixed held-out set against training-set size (log-log)."""
    fig = _figure(8.0, 3.2)
    axes = fig.subplots(1, 2)
    points = doc["points"]
    n = np.array([p["n_train"] for p in points])
    for ax, key, mae_key, scale, label in (
            (axes[0], "energy_rmse_per_atom", "energy_mae_per_atom", 1000.0, "energy error (meV/atom)"),
            (axes[1], "force_rmse", "force_mae", 1.0, "force error (eV/Å)")):
        ax.plot(n, [p[key] * scale for p in points], "o-", color="tab:blue", label="RMSE")
        ax.plot(n, [p[mae_key] * scale for p in points], "s--", color="tab:orange", label="MAE")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(n)
        ax.set_xticklabels([str(v) for v in n])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("training frames")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc['model_id']}: learning curve on {doc['n_frames']} held-out frames ({doc['held_out']})",
                 fontsize=9)
    return _save(fig, path)


def plot_eos(doc: dict, path: Path) -> Path:
    """Energy per atom against volume per atom, model and DFT, each with its Birch-Murnaghan fit."""
    fig = _figure(5.0, 3.6)
    ax = fig.subplots()
    for side, color in (("model", MODEL), ("dft", DFT)):
        data = doc.get(side)
        if not data:
            continue
        v, e = np.array(data["volumes_per_atom"]), np.array(data["energies_per_atom"])
        e0 = data["fit"]["e0_per_atom"] if data.get("fit") else e.min()
        ax.plot(v, e - e0, "o", color=color)
        if data.get("fit"):
            grid = np.linspace(v.min(), v.max(), 100)
            ax.plot(grid, _bm(grid, data["fit"]) - e0, "-", color=color,
                    label=f"{side}: V0 {data['fit']['v0_per_atom']:.3g} Å³/atom, B {data['fit']['b0_GPa']:.4g} GPa")
    ax.set_xlabel("volume (Å³/atom)")
    ax.set_ylabel("E − E0 (eV/atom)")
    ax.legend(fontsize=7)
    delta = doc.get("differences", {}).get("b0_GPa")
    title = f"EOS of {doc.get('formula', '')}" + (f": ΔB = {delta:+.3g} GPa" if delta is not None else "")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _bm(volume, fit: dict):
    """Birch-Murnaghan energy per atom at ``volume`` (Å³/atom) from a stored fit (B in GPa)."""
    from ase.units import GPa

    v0, b0, bp, e0 = fit["v0_per_atom"], fit["b0_GPa"] * GPa, fit["b1"], fit["e0_per_atom"]
    eta = (v0 / np.asarray(volume)) ** (2.0 / 3.0)
    return e0 + 9.0 * b0 * v0 / 16.0 * ((eta - 1.0) ** 3 * bp + (eta - 1.0) ** 2 * (6.0 - 4.0 * eta))


def plot_phonons(doc: dict, path: Path) -> Path:
    """Phonon band structure (model blue, DFT red dashed) along the stored path and the DOS."""
    fig = _figure(8.5, 3.6)
    ax, ax_dos = fig.subplots(1, 2, width_ratios=[3, 1], sharey=True)
    labels_at = []
    for side, color, style in (("model", MODEL, "-"), ("dft", DFT, "--")):
        data = doc.get(side)
        if not data:
            continue
        dist = np.array(data["band_distances"])
        freqs = np.array(data["band_frequencies_THz"])
        for b in range(freqs.shape[1]):
            ax.plot(dist, freqs[:, b], style, color=color, lw=1.0, label=side if b == 0 else None)
        labels_at = data.get("band_labels", labels_at)
        ax_dos.plot(data["dos_density"], data["dos_frequencies_THz"], style, color=color, lw=1.0)
    for x, _ in labels_at:
        ax.axvline(x, color="0.7", lw=0.6)
    if labels_at:
        ax.set_xticks([x for x, _ in labels_at])
        ax.set_xticklabels([name for _, name in labels_at])
    ax.axhline(0, color="0.4", lw=0.5)
    ax.set_ylabel("frequency (THz)")
    ax.legend(fontsize=7)
    ax_dos.set_xlabel("DOS")
    ax_dos.set_xticks([])
    rmse = doc.get("differences", {}).get("frequency_rmse_THz")
    title = f"phonons of {doc.get('formula', '')}, supercell {doc.get('supercell_matrix')}"
    if rmse is not None:
        title += f": frequency RMSE {rmse:.3g} THz"
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_holes(doc: dict, path: Path) -> Path:
    """Relaxed model energies per atom of the random structures against volume, with the DFT floor."""
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    rows = doc.get("structures", [])
    if not rows:
        _empty(ax, "no structures")
        return _save(fig, path)
    v = np.array([r["volume_per_atom"] for r in rows])
    e = np.array([r["energy_per_atom"] for r in rows])
    flagged = np.array([r["flagged"] for r in rows], dtype=bool)
    if (~flagged).any():
        ax.plot(v[~flagged], e[~flagged], "o", color=MODEL, label="relaxed with the model")
    if flagged.any():
        ax.plot(v[flagged], e[flagged], "o", color="tab:red", label="flagged (below the DFT floor − margin)")
    ax.axhline(doc["dft_lowest_energy_per_atom"], color="k", lw=1.0, label="lowest DFT energy of the campaign")
    ax.axhline(doc["dft_lowest_energy_per_atom"] - doc["margin_eV_per_atom"], color="k", lw=0.8, ls="--",
               label="− margin")
    for r in rows:
        if r.get("dft_energy_per_atom") is not None:
            ax.plot([r["volume_per_atom"]], [r["dft_energy_per_atom"]], "x", color=DFT, ms=8)
    if any(r.get("dft_energy_per_atom") is not None for r in rows):
        ax.plot([], [], "x", color=DFT, label="DFT single point (--dft-check)")
    ax.set_xlabel("volume (Å³/atom)")
    ax.set_ylabel("energy (eV/atom)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"hole search: {len(rows)} random structures relaxed with {doc['model_id']}", fontsize=9)
    return _save(fig, path)

