"""The report's figures, drawn with matplotlib's object API (Agg canvas, no pyplot state).

Each function takes a :class:`~otf_flows.report.data.CampaignData`, writes one PNG and
returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from otf_flows.analysis import bond_angle_distribution, rdf
from otf_flows.frames import frame_to_atoms
from otf_flows.report.data import CampaignData

__all__ = [
    "first_minimum",
    "plot_error_violins",
    "plot_errors_vs_step",
    "plot_interval_vs_step",
    "plot_parity",
    "plot_structure",
    "plot_time_split",
]

DPI = 130
PASSED, FAILED, REFIT, INITIAL = "tab:blue", "tab:red", "0.55", "#dbe9f6"
TRAINED, HELD_OUT = "tab:blue", "tab:orange"
WALKER_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


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


def _campaign_context(ax, data: CampaignData, label: bool) -> None:
    """Initial DFT MD shading and refit lines, shared by the step plots."""
    n_init = int(data.config.get("num_initial_steps") or 0)
    if n_init:
        ax.axvspan(0, n_init, color=INITIAL, zorder=0, label="initial DFT MD" if label else None)
    for k, c in enumerate(c for c in data.checks if c.refit):
        ax.axvline(c.step, color=REFIT, lw=1.2, zorder=1, label="refit" if label and k == 0 else None)


def _log_steps(data: CampaignData) -> bool:
    """Adaptive runs much longer than the first interval: checks crowd the start, use a symlog step axis."""
    first = int(data.config.get("check_interval") or 1)
    return bool(data.config.get("adaptive_method_parameters")) and data.campaign.total_steps > 20 * first


def _time_axis(ax, data: CampaignData) -> None:
    """A time axis (ps) on top of a linear MD-step axis."""
    dt_fs = float(data.config.get("md", {}).get("timestep_fs") or 0)
    if dt_fs > 0:
        top = ax.secondary_xaxis("top", functions=(lambda s: s * dt_fs / 1000.0, lambda t: t * 1000.0 / dt_fs))
        top.set_xlabel("time (ps)")


def _step_axis(ax, data: CampaignData, top_axis: bool) -> None:
    """x axis: MD step (symlog for long adaptive runs, else linear with a time axis on top)."""
    from matplotlib.ticker import ScalarFormatter

    total = max(data.campaign.step, data.campaign.total_steps, 1)
    dt_fs = float(data.config.get("md", {}).get("timestep_fs") or 0)
    if _log_steps(data):
        linear_up_to = int(data.config.get("check_interval") or 1)
        ax.set_xscale("symlog", linthresh=linear_up_to, linscale=0.6)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlim(0, total * 1.25)
        scale = f"linear to {linear_up_to}, then logarithmic"
    else:
        ax.set_xlim(0, total * 1.03)
        scale = ""
        if top_axis:
            _time_axis(ax, data)
    details = [x for x in (scale, f"{dt_fs:g} fs per step" if dt_fs > 0 else "") if x]
    ax.set_xlabel("MD step" + (f" ({'; '.join(details)})" if details else ""))


# --------------------------------------------------------------------------- Fig. 2c
def plot_errors_vs_step(data: CampaignData, path: Path) -> Path:
    """Check errors vs MD step with tolerances, passed/failed colours and refits (paper Fig. 2c)."""
    tol = data.config.get("tolerances") or {}
    panels = [("ediff", "energy error |ΔE|/N\n(meV/atom)", 1000.0), ("fmax", "max force error\n(eV/Å)", 1.0)]
    if tol.get("frmse") is not None:
        panels.append(("frmse", "force RMSE\n(eV/Å)", 1.0))
    if tol.get("vmax") is not None:
        panels.append(("vmax", "max virial error / N\n(meV/atom)", 1000.0))
    fig = _figure(8.0, 1.0 + 2.4 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    steps = np.array([c.step for c in data.checks], dtype=float)
    passed = np.array([c.passed for c in data.checks], dtype=bool)
    guard = _guard_mask(data)
    for k, (ax, (key, label, scale)) in enumerate(zip(axes, panels)):
        _campaign_context(ax, data, label=k == 0)
        values = np.array([np.nan if getattr(c, key) is None else getattr(c, key) for c in data.checks]) * scale
        ok, bad = passed & ~guard, ~passed & ~guard
        ax.scatter(steps[ok], values[ok], s=28, color=PASSED, edgecolor="k", lw=0.4, zorder=3,
                   label="check passed" if k == 0 else None)
        ax.scatter(steps[bad], values[bad], s=40, color=FAILED, marker="D", edgecolor="k", lw=0.4,
                   zorder=3, label="check failed" if k == 0 else None)
        if tol.get(key) is not None:
            ax.axhline(tol[key] * scale, color="k", ls="--", lw=1, zorder=2,
                       label="tolerance" if k == 0 else None)
        # scale to the scheduled checks; blow-up guard checks are pinned to the top edge when larger
        regular = values[~guard]
        top = np.nanmax(regular) if np.isfinite(regular).any() else 1.0
        top = 1.12 * max(top, tol[key] * scale if tol.get(key) is not None else 0.0) or 1.0
        ax.set_ylim(0, top)
        if guard.any():
            ax.scatter(steps[guard], np.minimum(np.nan_to_num(values[guard], nan=top), 0.97 * top), s=60,
                       color="k", marker="X", zorder=4, label="blow-up guard (DFT check)" if k == 0 else None)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    _step_axis(axes[-1], data, top_axis=False)
    if not _log_steps(data):
        _time_axis(axes[0], data)
    if not data.checks:
        axes[0].text(0.5, 0.5, "no DFT checks yet", ha="center", transform=axes[0].transAxes, color="0.4")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels) or 1, frameon=False)
    fig.suptitle(f"{data.campaign.name}: errors of the ML model at the DFT checks")
    return _save(fig, path)


def _guard_mask(data: CampaignData) -> np.ndarray:
    """Per check: a DFT check of a frame where the blow-up guard stopped a segment."""
    return np.array([getattr(c, "kind", "check") == "guard" for c in data.checks], dtype=bool)


def plot_interval_vs_step(data: CampaignData, path: Path) -> Path:
    """The checking interval that ended at each check, vs MD step."""
    fig = _figure(8.0, 3.6)
    ax = fig.subplots()
    _campaign_context(ax, data, label=True)
    steps = np.array([c.step for c in data.checks], dtype=float)
    intervals = np.array([c.interval for c in data.checks], dtype=float)
    passed = np.array([c.passed for c in data.checks], dtype=bool)
    guard = _guard_mask(data)
    if len(steps):
        ok, bad = passed & ~guard, ~passed & ~guard
        ax.hlines(intervals, steps - intervals, steps, color="0.3", lw=1.5, zorder=2, label="interval")
        ax.scatter(steps[ok], intervals[ok], s=28, color=PASSED, edgecolor="k", lw=0.4, zorder=3,
                   label="check passed")
        ax.scatter(steps[bad], intervals[bad], s=40, color=FAILED, marker="D", edgecolor="k", lw=0.4,
                   zorder=3, label="check failed")
        if guard.any():
            ax.scatter(steps[guard], intervals[guard], s=60, color="k", marker="X", zorder=4,
                       label="blow-up guard (DFT check)")
    params = data.config.get("adaptive_method_parameters") or {}
    for key in ("n_min", "n_max"):
        if params.get(key):
            ax.axhline(params[key], color="k", ls=":", lw=1)
            ax.annotate(f"{key} = {params[key]}", (1.0, params[key]), xycoords=("axes fraction", "data"),
                        xytext=(4, 0), textcoords="offset points", ha="left", va="center", fontsize=8)
    ax.set_yscale("log", base=2)
    from matplotlib.ticker import ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    hi = max([*intervals, params.get("n_max") or 1, 1])
    lo = min([*intervals, params.get("n_min") or hi, hi])
    ax.set_ylim(lo / 1.6, hi * 1.6)
    _step_axis(ax, data, top_axis=True)
    ax.set_ylabel("checking interval (MD steps)")
    ax.grid(alpha=0.3, which="major")
    mode = "adaptive" if params else "fixed"
    fig.suptitle(f"{data.campaign.name}: checking interval ({mode})")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels) or 1, frameon=False, fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------- model accuracy
def _groups(data: CampaignData):
    """(label, frame mask) per config type × trained / not trained, non-empty only."""
    c = data.comparison
    out = []
    for t in sorted(set(c.config_type.tolist())):
        for flag, name in ((True, "training"), (False, "not trained on")):
            mask = (c.config_type == t) & (data.trained == flag)
            if mask.any():
                out.append((t, name, mask))
    return out


def plot_parity(data: CampaignData, path: Path) -> Path:
    """Predicted vs reference energy per atom, force and virial components of the latest model."""
    c = data.comparison
    has_virial = c is not None and len(c.virial_frame) > 0
    fig = _figure(12.0 if has_virial else 8.5, 5.0)
    axes = fig.subplots(1, 3 if has_virial else 2)
    if c is None or c.n_frames == 0:
        for ax in axes:
            _empty(ax, "no model or no reference frames")
        return _save(fig, path)
    panels = [
        ("energy per atom (eV/atom)", c.energy_ref / c.n_atoms, c.energy_pred / c.n_atoms, np.arange(c.n_frames)),
        ("force component (eV/Å)", c.force_ref, c.force_pred, c.force_frame),
    ]
    if has_virial:
        n = c.n_atoms[c.virial_frame][:, None]
        panels.append(("virial component / N (eV/atom)", (c.virial_ref / n).ravel(), (c.virial_pred / n).ravel(),
                       np.repeat(c.virial_frame, 9)))
    for ax, (label, ref, pred, frame) in zip(axes, panels):
        unit = label[label.rindex("(") + 1:-1]
        for flag, colour, marker, name in ((True, TRAINED, "o", "training"), (False, HELD_OUT, "^", "not trained on")):
            sel = data.trained[frame] == flag
            if not sel.any():
                continue
            err = pred[sel] - ref[sel]
            rms = float(np.sqrt(np.mean(err**2)))
            ax.scatter(ref[sel], pred[sel], s=12 if len(ref) > 200 else 22, color=colour, marker=marker, alpha=0.7,
                       edgecolor="none", label=f"{name}: n = {int(sel.sum())}, RMSE {rms:.3g} {unit}")
        lo, hi = np.nanmin([ref.min(), pred.min()]), np.nanmax([ref.max(), pred.max()])
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8, zorder=0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"model {label}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{data.campaign.name}: {data.latest_model_id} on the campaign's reference frames")
    return _save(fig, path)


def plot_error_violins(data: CampaignData, path: Path) -> Path:
    """Error distributions of the latest model per config type, training vs not trained on."""
    c = data.comparison
    has_virial = c is not None and len(c.virial_frame) > 0
    fig = _figure(12.0 if has_virial else 8.5, 4.3)
    axes = fig.subplots(1, 3 if has_virial else 2)
    if c is None or c.n_frames == 0:
        for ax in axes:
            _empty(ax, "no model or no reference frames")
        return _save(fig, path)
    groups = _groups(data)
    panels = [
        ("energy error (meV/atom)", lambda m: 1000.0 * c.energy_error_per_atom[m]),
        ("force component error (eV/Å)", lambda m: c.force_error[m[c.force_frame]]),
    ]
    if has_virial:
        panels.append(("virial error / N (meV/atom)",
                       lambda m: 1000.0 * c.virial_error_per_atom[np.repeat(m[c.virial_frame], 9)]))
    rng = np.random.default_rng(0)
    for ax, (label, values_of) in zip(axes, panels):
        ticks = []
        for k, (ctype, name, mask) in enumerate(groups):
            values = values_of(mask)
            colour = TRAINED if name == "training" else HELD_OUT
            if len(values) > 1 and np.ptp(values) > 0:
                parts = ax.violinplot(values, positions=[k], widths=0.8, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colour)
                    body.set_edgecolor(colour)
                    body.set_alpha(0.45)
                    body.set_zorder(2)
            show = values if len(values) <= 2000 else rng.choice(values, 2000, replace=False)
            many = len(show) > 200
            ax.scatter(k + rng.uniform(-0.15, 0.15, len(show)), show, s=3 if many else 8, color=colour,
                       alpha=0.3 if many else 0.8, lw=0, zorder=1)
            if len(values):
                rms = float(np.sqrt(np.mean(values**2)))
                ax.hlines([rms, -rms], k - 0.3, k + 0.3, color="k", lw=1.2, zorder=3)
            ticks.append(f"{ctype}\n{name}\n(n={len(values)})")
        ax.axhline(0, color="0.3", lw=0.6)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=8)
        ax.set_xlim(-0.6, len(ticks) - 0.4)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{data.campaign.name}: error distributions of {data.latest_model_id} "
                 "(black bars: ±RMSE)")
    return _save(fig, path)


# --------------------------------------------------------------------------- structure
def first_minimum(r: np.ndarray, g: np.ndarray) -> float | None:
    """Position of the first minimum of g(r) after its highest peak (a bond cutoff), or None."""
    if not np.any(g > 0):
        return None
    smooth = np.convolve(g, np.ones(3) / 3, mode="same")
    peak = int(np.argmax(smooth))
    window = (r > r[peak]) & (r < 1.6 * r[peak])
    if not window.any():
        return None
    return float(r[window][np.argmin(smooth[window])])


def plot_structure(data: CampaignData, path: Path, r_max: float = 6.0, dr: float = 0.05) -> Path:
    """g(r) and bond-angle distribution: ML-MD trajectory vs reference-labelled frames."""
    fig = _figure(11.0, 4.2)
    ax_g, ax_a = fig.subplots(1, 2)
    checked = [frame_to_atoms(f) for f in data.frames if f.source not in ("initial_md", "audit")]
    initial = [frame_to_atoms(f) for f in data.frames if f.source == "initial_md"]
    walkers = sorted({a.info["walker"] for a in data.trajectory if "walker" in a.info})
    if walkers:  # one g(r) per walker: each its own conditions
        palette = [WALKER_COLOURS[i % len(WALKER_COLOURS)] for i in range(len(walkers))]
        sets = []
        for name, colour in zip(walkers, palette):
            own = [a for a in data.trajectory if a.info.get("walker") == name]
            sets.append((f"ML-MD {name} ({len(own)} frames)", own, colour, "-"))
    else:
        sets = [(f"ML-MD trajectory ({len(data.trajectory)} frames)", data.trajectory, "tab:green", "-")]
    sets += [(f"DFT check frames ({len(checked)})", checked, "k", "--"),
            (f"initial DFT-MD frames ({len(initial)})", initial, "tab:purple", ":")]
    sets = [s for s in sets if s[1] and all(a.pbc.all() for a in s[1])]
    fig.suptitle(f"{data.campaign.name}: structure of the ML-MD trajectory and of the DFT-labelled frames")
    if not sets:
        _empty(ax_g, "no periodic trajectory or reference frames yet")
        _empty(ax_a, "no periodic trajectory or reference frames yet")
        return _save(fig, path)
    curves = [(label, *rdf(frames, r_max, dr), frames, colour, ls) for label, frames, colour, ls in sets]
    cutoff = first_minimum(curves[0][1], curves[0][2])
    # the initial frames start from the (often perfect) input structure: scale the axes to the MD ensemble
    main = [c for c in curves if not c[0].startswith("initial")] or curves
    g_top, a_top = 1.15 * max(c[2].max() for c in main), 0.0
    for label, r, g, frames, colour, ls in curves:
        off_scale = " (peaks off scale)" if g.max() > g_top else ""
        ax_g.plot(r, g, color=colour, ls=ls, lw=1.5, label=label + off_scale)
        if cutoff:
            theta, density = bond_angle_distribution(frames, cutoff, 2.0)
            if any(c[0] == label for c in main):
                a_top = max(a_top, 1.15 * density.max())
            ax_a.plot(theta, density, color=colour, ls=ls, lw=1.5)
    ax_g.set_ylim(0, g_top)
    if a_top > 0:
        ax_a.set_ylim(0, a_top)
    ax_g.axhline(1.0, color="0.6", lw=0.6)
    ax_g.set_xlabel("r (Å)")
    ax_g.set_ylabel("g(r)")
    ax_g.set_xlim(0, r_max)
    ax_g.set_title("radial distribution function", fontsize=10)
    fig.legend(loc="outside lower center", ncols=min(len(curves), 4), fontsize=9, frameon=False)
    if cutoff:
        ax_g.axvline(cutoff, color="0.5", ls=":", lw=1)
        ax_a.set_title(f"bond angles (neighbours within {cutoff:.2f} Å, the first minimum of g)", fontsize=10)
        ax_a.set_xlabel("angle (degrees)")
        ax_a.set_ylabel("probability density (1/degree)")
        ax_a.set_xlim(0, 180)
        ax_a.set_xticks(range(0, 181, 30))
    else:
        _empty(ax_a, "no first minimum in g(r)")
    for ax in (ax_g, ax_a):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_time_split(data: CampaignData, table: dict, path: Path) -> Path:
    """Share of the campaign's wall time per kind of work (paper Table I)."""
    fig = _figure(8.0, 2.2)
    ax = fig.subplots()
    parts = [("reference (DFT)", table["reference_share"], "tab:red"), ("fitting", table["fit_share"], "tab:purple"),
             ("ML-MD", table["ml_md_share"], "tab:green"), ("other", table["other_share"], "0.7")]
    left = 0.0
    for label, share, colour in parts:
        share = share or 0.0
        ax.barh([0], [100 * share], left=[left], color=colour, edgecolor="white",
                label=f"{label}: {100 * share:.1f} %")
        left += 100 * share
    ax.set_xlim(0, 100)
    ax.set_yticks([])
    ax.set_xlabel(f"share of wall time (%) — total {table['wall_seconds']:.0f} s")
    fig.legend(loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    ax.set_title(f"{data.campaign.name}: where the wall time went", fontsize=10)
    return _save(fig, path)
