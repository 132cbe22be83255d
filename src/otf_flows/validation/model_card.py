"""A model card: seed 001's checklist for one model, gathered from the store (``otf model-card``).

Morrow, Gardner and Deringer (Sec. VI) ask a potential's authors to state its training data,
internal k-fold cross-validation errors with their definition, errors on external test sets, and
physically guided benchmarks; Sec. V C adds the search for holes. The card collects, for one
stored model: identity and fit settings, training data (size, sources, levels of theory, elements,
atoms per frame), cross-validation, external test sets, learning curves, errors at check time over
its campaign, physical benchmarks against DFT, the hole search and the lineage, and writes them
as ``model_card.json`` and ``model_card.html`` with the figures next to them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from otf_flows.frames import frame_level_of_theory
from otf_flows.schemas.documents import now
from otf_flows.validation import plots
from otf_flows.validation.card_html import render_card
from otf_flows.validation.refit import DEFINITIONS
from otf_flows.validation.sets import validations_of

logger = logging.getLogger(__name__)

__all__ = ["STUDY_KINDS", "gather", "write_model_card"]

#: ``kind`` of validation documents that are not plain error metrics on a frame set.
STUDY_KINDS = ("learning_curve", "physical", "holes")


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    return {"median": float(np.median(arr)), "mean": float(arr.mean()), "max": float(arr.max())}


def _check_errors(checks) -> dict:
    out = {"n": len(checks), "passed": sum(c.passed for c in checks)}
    for key in ("ediff", "frmse", "fmax", "vmax"):
        out[key] = _summary([getattr(c, key) for c in checks if getattr(c, key) is not None])
    return out


def training_data(store, model) -> dict:
    """Size, sources, levels of theory, config types, elements and atoms per frame of the training set."""
    from ase.data import chemical_symbols

    frames = store.get_frames(list(model.training_frame_ids))
    sizes = [len(f.numbers) for f in frames]
    elements = sorted({chemical_symbols[z] for f in frames for z in f.numbers})
    campaigns = Counter(f.campaign or "imported" for f in frames)
    return {
        "n_frames": len(frames),
        "n_atoms_total": int(sum(sizes)),
        "atoms_per_frame": {"min": min(sizes), "max": max(sizes)} if sizes else None,
        "elements": elements,
        "sources": dict(Counter(f.source for f in frames)),
        "campaigns": dict(campaigns),
        "config_types": dict(Counter(f.config_type for f in frames)),
        "levels_of_theory": dict(Counter(frame_level_of_theory(f) for f in frames)),
        "with_virials": sum(f.virial is not None for f in frames),
        "energy_per_atom_range": [min(f.energy / len(f.numbers) for f in frames),
                                  max(f.energy / len(f.numbers) for f in frames)] if frames else None,
    }


def check_time_errors(store, model) -> dict | None:
    """Errors at check time over the model's campaign (each measured before the frame was trained on):
    every check of the campaign, and the checks of this model."""
    if model.campaign is None:
        return None
    checks = [c for c in store.checks(model.campaign) if c.kind == "check"]
    own = [c for c in checks if c.model_id == model.model_id]
    return {"campaign": _check_errors(checks), "this_model": _check_errors(own),
            "definition": "errors of the model in use at each DFT check on the checked frame, measured before "
                          "the frame joined the training data: ediff = |E_ML - E_DFT|/N (eV/atom), frmse = RMSE "
                          "over force components (eV/Å), fmax = largest force-component error (eV/Å)"}


def _lineage(store, model_id: str) -> list[dict]:
    return [{"model_id": m.model_id, "parent_model_id": m.parent_model_id, "version": m.version,
             "n_training_frames": m.n_training_frames, "trigger_check_step": m.trigger_check_step,
             "fit_seconds": m.fit_seconds, "created_at": m.created_at.isoformat()}
            for m in store.lineage(model_id)]


def _slim(doc: dict) -> dict:
    """A validation document without its per-frame lists."""
    drop = {"frame_ids", "energy_error_per_atom", "held_out_frame_ids"}
    out = {k: v for k, v in doc.items() if k not in drop}
    if "folds" in out:
        out["folds"] = [{k: v for k, v in f.items() if k != "frame_ids"} for f in out["folds"]]
    if "points" in out:
        out["points"] = [{k: v for k, v in p.items() if k != "frame_ids"} for p in out["points"]]
    return out


def gather(store, model_id: str) -> dict:
    """Everything the card shows, as one JSON-able mapping."""
    model = store.get_model(model_id)
    validations = [_slim(v) for v in validations_of(store, model_id)]
    by_kind: dict[str, list[dict]] = {}
    for v in validations:
        by_kind.setdefault(v.get("kind") or "benchmark", []).append(v)
    campaign = store.get_campaign(model.campaign) if model.campaign else None
    reference = (campaign.config.get("reference") if campaign else None) or {}
    return {
        "model": {
            "model_id": model.model_id, "backend": model.backend, "campaign": model.campaign,
            "version": model.version, "parent_model_id": model.parent_model_id,
            "created_at": model.created_at.isoformat(), "fit_seconds": model.fit_seconds,
            "fit_settings": {k: v for k, v in model.fit_settings.items() if k != "command"},
            "fit_command": model.fit_settings.get("command"), "flags": model.flags, "warnings": model.warnings,
        },
        "reference": {k: v for k, v in reference.items()
                      if k not in ("cp2k_cmd", "vasp_cmd", "vasp_gamma_cmd", "omp_threads", "retries")},
        "training_data": training_data(store, model),
        "cross_validation": by_kind.get("cv", []),
        "external_test_sets": by_kind.get("benchmark", []),
        "learning_curves": by_kind.get("learning_curve", []),
        "check_time_errors": check_time_errors(store, model),
        "physical_benchmarks": by_kind.get("physical", []),
        "hole_search": by_kind.get("holes", []),
        "lineage": _lineage(store, model_id),
        "definitions": DEFINITIONS,
        "generated_at": now().isoformat(),
    }


def write_model_card(store, model_id: str, out_dir) -> Path:
    """Write ``model_card.json``, ``model_card.html`` and the figures into ``out_dir``; return the page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = gather(store, model_id)
    figures: dict[str, Path] = {}
    for doc in card["cross_validation"]:
        figures[doc["validation_id"]] = plots.plot_cv(doc, out / f"cv{doc['k']}.png")
    for doc in card["learning_curves"]:
        name = doc["held_out"].replace("/", "_")
        figures[doc["validation_id"]] = plots.plot_learning_curve(doc, out / f"learning_curve_{name}.png")
    for doc in card["physical_benchmarks"]:
        draw = {"eos": plots.plot_eos, "phonons": plots.plot_phonons}.get(doc.get("property"))
        if draw is not None:
            figures[doc["validation_id"]] = draw(doc, out / f"{doc['property']}_{doc.get('label', 'structure')}.png")
    for doc in card["hole_search"]:
        figures[doc["validation_id"]] = plots.plot_holes(doc, out / "holes.png")
    card["figures"] = {key: path.name for key, path in figures.items()}
    (out / "model_card.json").write_text(json.dumps(card, indent=1, default=str), encoding="utf-8")
    page = out / "model_card.html"
    page.write_text(render_card(card), encoding="utf-8")
    return page
