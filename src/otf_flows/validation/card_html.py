"""The model card's HTML page (the figures are PNG files next to it)."""

from __future__ import annotations

from html import escape

from otf_flows.validation.physical_analysis import compare_phonons, eos_range_notes

__all__ = ["render_card"]

# the campaign report's look (otf_flows.report.html), which links to the card
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; } .muted { color: #666; font-size: 0.9em; }
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


def _milli(value) -> str:
    return "–" if value is None else f"{1000.0 * value:.3g}"


def _f(value, fmt: str = "{:.3g}") -> str:
    return "–" if value is None else fmt.format(value)


def _definitions(card: dict, keys) -> str:
    items = "".join(f"<li><b>{escape(k)}</b>: {escape(card['definitions'][k])}</li>" for k in keys
                    if k in card["definitions"])
    return f"<ul class='muted'>{items}</ul>"


def _figure(card: dict, key: str, caption: str) -> str:
    name = card.get("figures", {}).get(key)
    if not name:
        return ""
    return f"<figure><img src='{escape(name)}' alt='{escape(key)}'><figcaption>{escape(caption)}</figcaption></figure>"


def _metrics_row(name: str, m: dict) -> list[str]:
    return [escape(name), _num(m.get("n_frames")), _milli(m.get("energy_rmse_per_atom")),
            _milli(m.get("energy_mae_per_atom")), _f(m.get("force_rmse")), _f(m.get("force_mae")),
            _milli(m.get("virial_rmse_per_atom"))]


_METRIC_HEAD = ["set", "frames", "E RMSE (meV/atom)", "E MAE (meV/atom)", "F RMSE (eV/Å)", "F MAE (eV/Å)",
                "V RMSE (meV/atom)"]


def _training(card: dict) -> str:
    t = card["training_data"]
    rows = [["frames", _num(t["n_frames"])], ["atoms (all frames)", _num(t["n_atoms_total"])],
            ["atoms per frame", "–" if not t["atoms_per_frame"] else
             f"{t['atoms_per_frame']['min']}–{t['atoms_per_frame']['max']}"],
            ["elements", escape(", ".join(t["elements"]))],
            ["sources", escape(", ".join(f"{k}: {v}" for k, v in t["sources"].items()))],
            ["campaigns", escape(", ".join(f"{k}: {v}" for k, v in t["campaigns"].items()))],
            ["config types", escape(", ".join(f"{k}: {v}" for k, v in t["config_types"].items()))],
            ["frames with DFT virials", _num(t["with_virials"])],
            ["energy range (eV/atom)", "–" if not t["energy_per_atom_range"] else
             f"{t['energy_per_atom_range'][0]:.4f} … {t['energy_per_atom_range'][1]:.4f}"]]
    levels = "".join(f"<li>{escape(k)}: {v} frames</li>" for k, v in t["levels_of_theory"].items())
    ref = card.get("reference") or {}
    ref_text = escape(", ".join(f"{k}={v}" for k, v in ref.items() if v not in (None, {}, [])))
    return (_table(["quantity", "value"], rows) + f"<p>Levels of theory:</p><ul>{levels}</ul>"
            + (f"<p class='muted'>Campaign reference settings: {ref_text}</p>" if ref_text else ""))


def _cv(card: dict) -> str:
    docs = card["cross_validation"]
    if not docs:
        return "<p class='muted'>None stored (run <code>otf validate MODEL --cv 5</code>).</p>"
    out = []
    for d in docs:
        s = d["spread"]
        rows = [_metrics_row(f"pooled over {d['k']} folds", d)]
        for f in d["folds"]:
            rows.append(_metrics_row(f"fold {f['fold'] + 1} ({f['n_train']} train / {f['n_test']} test)", f))
        spread_rows = [[escape(label), _milli(s[key]["mean"]) if scale else _f(s[key]["mean"]),
                        _milli(s[key]["std"]) if scale else _f(s[key]["std"]),
                        _milli(s[key]["min"]) if scale else _f(s[key]["min"]),
                        _milli(s[key]["max"]) if scale else _f(s[key]["max"])]
                       for key, label, scale in (("energy_rmse_per_atom", "E RMSE (meV/atom)", True),
                                                 ("force_rmse", "F RMSE (eV/Å)", False),
                                                 ("force_mae", "F MAE (eV/Å)", False)) if s.get(key)]
        out.append(f"<h3>{d['k']}-fold cross-validation (seed {d['seed']})</h3>"
                   + _table(_METRIC_HEAD, rows)
                   + "<p>Spread over folds:</p>" + _table(["metric", "mean", "std", "min", "max"], spread_rows)
                   + _figure(card, d["validation_id"], "Per-fold RMSE of the sub-models on the fold each did not "
                             "see; black line: pooled over all held-out predictions; grey band: mean ± std.")
                   + f"<p class='muted'>Sub-models: {escape(d['fit']['backend'])} with the model's own fit "
                     f"settings (virials {'on' if d['fit']['virials'] else 'off'}, seed {d['fit']['seed']}).</p>")
    return "".join(out) + _definitions(card, ("cv", "energy_rmse_per_atom", "force_rmse", "force_mae"))


def _external(card: dict) -> str:
    docs = card["external_test_sets"]
    if not docs:
        return "<p class='muted'>None stored (run <code>otf validate MODEL --benchmark NAME</code>).</p>"
    rows = [_metrics_row(d["benchmark"] + (" (untrained check frames)" if d["benchmark"] == "checks" else ""), d)
            for d in docs]
    return _table(_METRIC_HEAD, rows) + _definitions(
        card, ("energy_rmse_per_atom", "energy_mae_per_atom", "force_rmse", "force_mae", "virial_rmse_per_atom"))


def _learning(card: dict) -> str:
    docs = card["learning_curves"]
    if not docs:
        return "<p class='muted'>None stored (run <code>otf learning-curve MODEL --benchmark NAME</code>).</p>"
    out = []
    for d in docs:
        rows = [[str(p["n_train"]), _milli(p["energy_rmse_per_atom"]), _f(p["force_rmse"]), _f(p["force_mae"]),
                 _f(p["fit_seconds"], "{:.1f} s")] for p in d["points"]]
        out.append(f"<h3>Held out: {escape(d['held_out_description'])}</h3>"
                   + _table(["training frames", "E RMSE (meV/atom)", "F RMSE (eV/Å)", "F MAE (eV/Å)", "fit time"],
                            rows)
                   + _figure(card, d["validation_id"], "Error on the fixed held-out frames against the number of "
                             "training frames (nested random subsets, log-log)."))
    return "".join(out) + _definitions(card, ("learning_curve",))


def _check_time(card: dict) -> str:
    c = card["check_time_errors"]
    if c is None:
        return "<p class='muted'>The model belongs to no campaign.</p>"

    def row(name, s):
        cells = [escape(name), str(s["n"]), str(s["passed"])]
        for key, fmt in (("ediff", "{:.4f}"), ("frmse", "{:.3f}"), ("fmax", "{:.3f}")):
            v = s[key]
            cells.append("–" if v is None else f"{fmt.format(v['median'])} / {fmt.format(v['max'])}")
        return cells

    return (_table(["checks", "n", "passed", "ediff median / max (eV/atom)", "frmse median / max (eV/Å)",
                    "fmax median / max (eV/Å)"],
                   [row("every check of the campaign", c["campaign"]), row("checks of this model", c["this_model"])])
            + f"<p class='muted'>{escape(c['definition'])}</p>")


_DIFF_LABELS = {
    "b0_GPa": "ΔB (GPa)", "b1": "ΔB'", "v0_per_atom_A3": "ΔV0 (Å³/atom)",
    "relative_energy_rmse_meV_per_atom": "RMSE of E − E(lowest cell) over the common cells (meV/atom)",
    "frequency_rmse_THz": "frequency RMSE over every branch and q-point of the path (THz)",
    "frequency_mae_THz": "frequency MAE (THz)", "frequency_max_abs_THz": "largest |Δf| (THz)",
    "n_qpoints": "q-points compared", "n_branches": "branches",
    "c11_GPa": "ΔC11 (GPa)", "c12_GPa": "ΔC12 (GPa)", "c44_GPa": "ΔC44 (GPa)",
    "tensor_rms_GPa": "RMS of ΔCij over the Cij with |Cij(DFT)| > 1 GPa (GPa)",
    "tensor_max_abs_GPa": "largest |ΔCij| (GPa)", "k_vrh_GPa": "ΔK_VRH (GPa)", "g_vrh_GPa": "ΔG_VRH (GPa)",
}


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else escape(str(v))


def _physical(card: dict) -> str:
    docs = card["physical_benchmarks"]
    if not docs:
        return ("<p class='muted'>None stored (run <code>otf validate MODEL --physical eos|phonons|elastic "
                "--structure FILE</code>).</p>")
    out = []
    for d in docs:
        diffs = d.get("differences") or {}
        rows = [[escape(_DIFF_LABELS.get(k, k)), _value(v)] for k, v in diffs.items()]
        all_notes = list(d.get("notes", []))
        if d.get("property") == "eos":  # documents stored before the range check carry no such note
            all_notes += [n for n in eos_range_notes(d.get("model"), d.get("dft")) if n not in all_notes]
        notes = "".join(f"<li>{escape(n)}</li>" for n in all_notes)
        summary = d.get("summary") or {}
        if d.get("property") == "phonons" and d.get("model"):  # documents stored before these rows existed
            summary = {**compare_phonons(d["model"], d.get("dft"))[0], **summary}
        srows = [[escape(k), _value(summary[k].get("model")), _value(summary[k].get("dft")),
                  escape(str(summary[k].get("unit", "")))] for k in summary]
        out.append(f"<h3>{escape(d['property'])} of {escape(d.get('formula', ''))} ({escape(d.get('label', ''))})</h3>"
                   + (_table(["quantity", "model", "DFT", "unit"], srows) if srows else "")
                   + (_table(["difference (model − DFT)", "value"], rows) if rows else "")
                   + _figure(card, d["validation_id"], f"{d['property']}: model (blue) and DFT (red)")
                   + (f"<ul class='muted'>{notes}</ul>" if notes else ""))
    return "".join(out)


def _holes(card: dict) -> str:
    docs = card["hole_search"]
    if not docs:
        return "<p class='muted'>None stored (run <code>otf holes MODEL --n 20</code>).</p>"
    out = []
    for d in docs:
        rows = [[str(r["index"]), _f(r["energy_per_atom"], "{:.4f}"), _f(r["volume_per_atom"], "{:.2f}"),
                 _f(r["min_distance_A"], "{:.2f}"), f"{r['steps']}{'' if r['converged'] else ' (not converged)'}",
                 "yes" if r["flagged"] else "",
                 _f(r.get("dft_energy_per_atom"), "{:.4f}"), escape(r.get("verdict") or "")]
                for r in sorted(d["structures"], key=lambda r: r["energy_per_atom"])]
        out.append(f"<p>{d['n_structures']} random structures of {escape(d['formula'])} at "
                   f"{d['density_g_cm3']:.3g} g/cm³, relaxed with the model ({escape(d['relax'])}). Lowest model "
                   f"energy {d['lowest_energy_per_atom']:.4f} eV/atom; lowest DFT energy of the campaign "
                   f"{d['dft_lowest_energy_per_atom']:.4f} eV/atom; margin {d['margin_eV_per_atom']} eV/atom: "
                   f"<b>{d['n_flagged']} flagged</b>.</p>"
                   + _table(["#", "E model (eV/atom)", "V (Å³/atom)", "min distance (Å)", "relaxation steps", "flagged",
                             "E DFT (eV/atom)", "verdict"], rows)
                   + _figure(card, d["validation_id"], "Relaxed random structures: model energy per atom against "
                             "volume; the campaign's lowest DFT energy per atom and the flag threshold.")
                   + f"<p class='muted'>{escape(d['definition'])}"
                   + (f"; {escape(d['dft_note'])}" if d.get("dft_note") else "") + ".</p>")
    return "".join(out)


def _lineage(card: dict) -> str:
    rows = [[escape(m["model_id"]), _num(m["parent_model_id"]), _num(m["n_training_frames"]),
             _num(m["trigger_check_step"]), _f(m["fit_seconds"], "{:.1f} s"), escape(m["created_at"][:19])]
            for m in card["lineage"]]
    return _table(["model", "parent", "training frames", "triggered by check at step", "fit time", "created (UTC)"],
                  rows)


def render_card(card: dict) -> str:
    """The page: seed 001's checklist, one section each."""
    m = card["model"]
    settings = escape(", ".join(f"{k}={v}" for k, v in m["fit_settings"].items() if v not in (None, "", [], {})))
    flags = "".join(f"<li>{escape(x)}</li>" for x in m["flags"] + m["warnings"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>model card: {escape(m['model_id'])}</title>
<style>{_CSS} h3 {{ margin-bottom: 0.2em; }} code {{ background: #f4f4f4; padding: 0 0.2em; }}
.settings {{ font-family: monospace; font-size: 0.8em; word-break: break-all; color: #444; }}</style></head><body>
<h1>Model card: {escape(m['model_id'])}</h1>
<p class="muted">{escape(m['backend'])} model · campaign {escape(str(m['campaign']))} · version {m['version']} ·
parent {escape(str(m['parent_model_id']))} · fitted in {m['fit_seconds']:.1f} s ·
created {escape(m['created_at'][:19])} UTC ·
card generated {escape(card['generated_at'][:16])} UTC</p>
{f"<ul>{flags}</ul>" if flags else ""}
<p class="settings">fit settings: {settings}</p>
<p class="muted">The sections follow the checklist of Morrow, Gardner and Deringer, "How to validate machine-learned
interatomic potentials" (J. Chem. Phys. 2023), Sec. VI, with the random search of Sec. V C.</p>
<h2>1. Training data</h2>
{_training(card)}
<h2>2. Internal k-fold cross-validation</h2>
{_cv(card)}
<h2>3. External test sets</h2>
{_external(card)}
<h2>4. Learning curve</h2>
{_learning(card)}
<h2>5. Errors at check time over the campaign</h2>
{_check_time(card)}
<h2>6. Physical benchmarks against DFT</h2>
{_physical(card)}
<h2>7. Hole search (random structures)</h2>
{_holes(card)}
<h2>8. Lineage (newest first)</h2>
{_lineage(card)}
</body></html>
"""
