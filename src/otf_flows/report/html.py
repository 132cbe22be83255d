"""The report's one-page HTML summary (tables and the PNG figures next to it)."""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np

from otf_flows.report.data import CampaignData
from otf_flows.schemas.documents import now
from otf_flows.validation.metrics import metrics

__all__ = ["render_html"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; } .muted { color: #666; font-size: 0.9em; }
.flex { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
"""


def _num(value, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return fmt.format(value)
    return escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _performance(table: dict) -> str:
    rows = [
        ["Time in reference calculations (DFT)", _pct(table["reference_share"])],
        ["Time in model fitting (gap_fit)", _pct(table["fit_share"])],
        ["Time in ML-MD (model forces, integrator)", _pct(table["ml_md_share"])],
        ["Other (decisions, scheduling, I/O)", _pct(table["other_share"])],
        ["Wall time", f"{table['wall_seconds']:.1f} s"],
        ["DFT calls (initial MD + checks)", _num(table["dft_calls"])],
        ["Model fits", _num(table["fits"])],
        ["ML-accelerated MD steps", _num(table["md_steps"])],
        ["DFT calls per 1000 MD steps", _num(table["dft_calls_per_1000_steps"], "{:.1f}")],
        ["Mean time of one reference calculation", _num(table["mean_reference_seconds"], "{:.3g} s")],
        ["Reference-driven MD steps in the same wall time (estimate)", _num(table["aimd_steps_same_time"], "≈ {:.0f}")],
        ["Speed-up (estimate)", _num(table["speedup"], "≈ {:.3g}×")],
    ]
    return _table(["quantity", "value"], rows)


_METRIC_COLUMNS = [
    ("n_frames", "frames", "{}"),
    ("energy_rmse_per_atom", "E RMSE (meV/atom)", "e"),
    ("energy_mae_per_atom", "E MAE (meV/atom)", "e"),
    ("energy_rmse_per_sqrt_atom", "E RMSE/√N (meV/√atom)", "e"),
    ("force_rmse", "F RMSE (eV/Å)", "{:.4g}"),
    ("force_mae", "F MAE (eV/Å)", "{:.4g}"),
    ("virial_rmse_per_atom", "V RMSE (meV/atom)", "e"),
]


def _metric_cells(m: dict) -> list[str]:
    cells = []
    for key, _, fmt in _METRIC_COLUMNS:
        value = m.get(key)
        if fmt == "e":
            cells.append(_num(None if value is None else 1000.0 * value, "{:.3g}"))
        elif fmt == "{}":
            cells.append(_num(value))
        else:
            cells.append(_num(value, fmt))
    return cells


def _accuracy(data: CampaignData) -> str:
    c = data.comparison
    if c is None or c.n_frames == 0:
        return "<p class='muted'>No model or no reference frames yet.</p>"
    rows = []
    for name, mask in (("all reference frames", slice(None)), ("training frames", data.trained),
                       ("check frames not trained on", ~data.trained)):
        sub = c.select(mask)
        if sub.n_frames:
            rows.append([escape(name), *_metric_cells(metrics(sub))])
    by_type = c.by_config_type()
    if len(by_type) > 1:
        for ctype, sub in by_type.items():
            rows.append([f"config_type {escape(ctype)}", *_metric_cells(metrics(sub))])
    return _table(["set", *[h for _, h, _ in _METRIC_COLUMNS]], rows)


def _check_time(data: CampaignData) -> str:
    """Errors at check time: the out-of-sample figures (the model had not seen the checked frame)."""
    checks = [c for c in data.checks if c.kind == "check"]
    if not checks:
        return "<p class='muted'>No checks yet.</p>"
    rows = []
    last = checks[-5:]
    groups = [("all checks", checks), (f"last {len(last)} checks", last)]
    for walker in sorted({c.walker for c in checks if c.walker is not None}):  # one row per walker
        groups.append((f"walker {walker}", [c for c in checks if c.walker == walker]))
    for name, subset in groups:
        cells = [escape(name), str(len(subset)), f"{sum(c.passed for c in subset)}"]
        for key, fmt in (("ediff", "{:.4f}"), ("frmse", "{:.3f}"), ("fmax", "{:.3f}")):
            values = [getattr(c, key) for c in subset if getattr(c, key) is not None]
            cells.append(f"{fmt.format(float(np.median(values)))} / {fmt.format(max(values))}" if values else "-")
        rows.append(cells)
    return _table(["checks", "n", "passed", "ediff median / max (eV/atom)", "frmse median / max (eV/Å)",
                   "fmax median / max (eV/Å)"], rows)


def _validations(data: CampaignData) -> str:
    if not data.validations:
        return "<p class='muted'>None stored (run <code>otf validate MODEL --benchmark NAME</code>).</p>"
    # error metrics on frame sets (benchmarks, check frames, cross-validation); the other studies are in the model card
    rows = [[escape(v["model_id"]), escape(v["benchmark"]), *_metric_cells(v)] for v in data.validations
            if v.get("kind") in (None, "cv")]
    return _table(["model", "benchmark", *[h for _, h, _ in _METRIC_COLUMNS]], rows)


def _models(data: CampaignData) -> str:
    rows = [[escape(m.model_id), _num(m.parent_model_id), _num(m.n_training_frames), _num(m.trigger_check_step),
             _num(m.fit_seconds, "{:.1f} s")] for m in data.models]
    return _table(["model", "parent", "training frames", "triggered by check at step", "fit time"], rows)


def _model_card(page: str | None, model_id: str | None) -> str:
    if page is None:
        return ""
    return (f"<h2>Model card</h2><p><a href='{escape(page)}'>Model card of {escape(str(model_id))}</a>: training "
            "data, cross-validation, external test sets, learning curve, errors at check time, physical benchmarks "
            "against DFT, hole search and lineage (the checklist of Morrow, Gardner and Deringer, 2023).</p>")


def render_html(data: CampaignData, table: dict, figures: dict[str, Path], model_card: str | None = None) -> str:
    """The page: Table I, checks and models, accuracy of the latest model, the figures."""
    doc = data.campaign
    checks = data.checks
    n_failed = sum(not c.passed for c in checks)
    tol = data.config.get("tolerances") or {}
    tol_text = ", ".join(f"{k} < {v:g}" for k, v in tol.items() if v is not None) or "none set"
    captions = {
        "errors_vs_step": "Errors of the ML model at each DFT check vs MD step, measured at check time before "
                          "the frame joins the training data (cf. Fig. 2c of Stenczel et al. 2023): passed checks blue, failed red, tolerances dashed, refits as vertical grey lines, "
                          "initial DFT-driven MD shaded.",
        "interval_vs_step": "Checking interval: each horizontal bar spans the ML-MD steps between two checks; the "
                            "marker at its end is the check (blue passed, red failed).",
        "parity": f"Parity of the latest model ({escape(str(data.latest_model_id))}) on every reference-labelled "
                  "frame of the campaign: frames in its training set (blue circles) and check frames it was not "
                  "trained on (orange triangles).",
        "error_violins": "Distributions of the latest model's errors per config type, training frames vs check "
                         "frames it was not trained on; black bars at ±RMSE.",
        "rdf": "Radial distribution function and bond-angle distribution of the ML-MD trajectory frames, "
                     "of the DFT check frames (taken from the same ML-MD run) and of the initial DFT-driven MD "
                     "frames (which start from the input structure).",
        "time_split": "Where the wall time went (the paper's Table I).",
    }
    slow = (" Below 1 the reference method is cheaper than the ML model (e.g. an EMT test reference)."
            if table["speedup"] is not None and table["speedup"] < 1 else "")
    figs = "".join(
        f"<figure><img src='{escape(p.name)}' alt='{escape(key)}'><figcaption>{captions.get(key, '')}"
        "</figcaption></figure>"
        for key, p in figures.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>otf report: {escape(doc.name)}</title>
<style>{_CSS}</style></head><body>
<h1>Campaign {escape(doc.name)}</h1>
<p class="muted">status {escape(doc.status)} · MD step {doc.step} of {doc.total_steps} · current model
{escape(str(data.latest_model_id))} · tolerances: {escape(tol_text)} · report generated {now():%Y-%m-%d %H:%M UTC}</p>
<div class="flex"><div>
<h2>Performance (cf. Table I)</h2>
{_performance(table)}
<p class="muted">Speed-up = ML-MD steps × mean reference time per call / wall time: the reference-driven
MD steps the same wall time would have bought, measured from this campaign's own reference calls.{slow}</p>
</div><div>
<h2>Checks and models</h2>
<p>{len(checks)} DFT checks, {n_failed} failed, {sum(c.refit for c in checks)} refits.</p>
{_models(data)}
</div></div>
<h2>Errors at check time (out-of-sample)</h2>
<p class="muted">Each check's errors are measured before its frame joins the training data, so they are
the model's errors on a frame it had not seen: the honest accuracy figure of the run. Every label is
then trained on (<code>refit.train_on</code>), which makes the table below largely in-sample.</p>
{_check_time(data)}
<h2>Accuracy of the latest model on the campaign's frames</h2>
{_accuracy(data)}
<h2>Stored validations</h2>
{_validations(data)}
{_model_card(model_card, data.latest_model_id)}
<h2>Figures</h2>
{figs}
</body></html>
"""
