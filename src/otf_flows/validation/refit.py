"""Refit a stored model on parts of its own training data: k-fold cross-validation and learning curves.

Seed 001 (Morrow, Gardner and Deringer, Sec. VI) asks for "energy and force errors from internal
(k-fold) cross-validation, including a definition of how these errors have been obtained". Here a
model's training frames are split into ``k`` folds (shuffled with a fixed seed); for each fold a
sub-model is fitted on the other ``k - 1`` folds with the model's own stored fit settings, through
the ML-backend protocol (GAP: ``gap_fit`` with the stored descriptor, sigmas and options; MACE:
``mace_run_train`` with the stored architecture and training settings, from scratch or from the
same foundation model -- never from the model's parent, which saw the held-out frames), and
evaluated on the fold it did not see. A learning curve fits sub-models on nested random subsets
of growing size of the training frames and evaluates each on one fixed held-out set.

The error definitions are those of :mod:`otf_flows.validation.metrics` and are written into every
document (:data:`DEFINITIONS`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from otf_flows.campaign import CampaignConfig, Refit
from otf_flows.errors import InputError
from otf_flows.frames import frame_to_atoms
from otf_flows.labels import VIRIAL_KEY
from otf_flows.ml.registry import GapModel, MaceModel, get_backend
from otf_flows.schemas.documents import FrameDoc, ModelDoc, now
from otf_flows.validation.evaluate import predict, reference_labels
from otf_flows.validation.metrics import METRIC_KEYS, compare, metrics, summarise
from otf_flows.validation.sets import CHECKS, benchmark_frames, save_validation

logger = logging.getLogger(__name__)

__all__ = ["DEFINITIONS", "FitRecipe", "cross_validate", "fit_recipe", "kfold_indices", "learning_curve",
           "learning_curve_sizes", "nested_subsets", "spread"]

DEFINITIONS = {
    "energy_rmse_per_atom": "RMSE over frames of (E_model - E_DFT) / N (eV/atom), N = atoms of the frame",
    "energy_mae_per_atom": "MAE over frames of |E_model - E_DFT| / N (eV/atom)",
    "force_rmse": "RMSE over every Cartesian force component of every atom of every frame (eV/Å); "
                  "components, not magnitudes",
    "force_mae": "MAE over every Cartesian force component (eV/Å)",
    "virial_rmse_per_atom": "RMSE over the nine virial components / N of frames with DFT virials (eV/atom)",
    "cv": "k-fold cross-validation: the training frames shuffled (seed) and split into k folds of near-equal "
          "size; sub-model i is fitted on the other k-1 folds with the model's own fit settings and "
          "predicts fold i. 'pooled' = the metrics over all held-out predictions together; 'mean'/'std' = "
          "mean and standard deviation (ddof=1) of the k per-fold metrics",
    "learning_curve": "sub-models fitted on nested random subsets (seed) of the training frames, each with "
                      "the model's own fit settings, all evaluated on the same held-out frames, none of "
                      "which is in any subset",
}


class FitRecipe:
    """How a stored model was fitted: its backend, ``model`` and ``refit`` blocks, virials, seed.

    Attributes
    ----------
    backend
        Backend name (``gap``, ``mace``).
    model, refit
        The campaign's ``model`` and ``refit`` blocks that reproduce the fit.
    virials
        Whether the fit trained on reference virials.
    seed
        Random seed of the fit (gap_fit ``rnd_seed``, MACE ``--seed``), None if it had none.
    """

    def __init__(self, backend: str, model, refit: Refit, virials: bool, seed: int | None):
        self.backend, self.model, self.refit, self.virials, self.seed = backend, model, refit, virials, seed

    def describe(self) -> dict:
        """What the sub-models are fitted with, for the documents."""
        return {"backend": self.backend, "model": self.model.model_dump(mode="json"),
                "refit": self.refit.model_dump(mode="json", exclude={"previous_data"}),
                "virials": self.virials, "seed": self.seed}


_GAP_REFIT_KEYS = ("default_sigma", "descriptor_str", "extra_gap_opts", "e0", "e0_method")


def _command_value(command: list[str], key: str) -> str | None:
    for arg in command:
        if arg.startswith(key + "="):
            return arg[len(key) + 1:]
    return None


def fit_recipe(model: ModelDoc, config: CampaignConfig | None = None) -> FitRecipe:
    """The settings that reproduce ``model``'s fit, from its stored ``fit_settings`` (and its campaign's
    configuration for whether it trained on virials, when it has one).

    GAP: the descriptor is the one ``gap_fit`` ran with (the ``gap={...}`` argument of the stored
    command), the sigmas, ``extra_gap_opts`` (the retry's larger ``sparse_jitter`` when the fit needed
    it) and e0 as stored. MACE: the stored ``model`` block; sub-models train for ``max_num_epochs``.

    Raises
    ------
    InputError
        If the stored settings do not describe a fit (a model registered without them).
    """
    settings = dict(model.fit_settings or {})
    command = [str(x) for x in settings.get("command", [])]
    seed_text = _command_value(command, "rnd_seed") or _command_value(command, "--seed")
    seed = int(seed_text) if seed_text and seed_text.lstrip("-").isdigit() else None
    if config is not None:
        virials = config.trains_on_virials
    else:  # `otf fit` trains on whatever labels its frames have
        virials = True
    if model.backend == "gap":
        data = {k: settings[k] for k in _GAP_REFIT_KEYS if k in settings and settings[k] is not None}
        descriptor = _command_value(command, "gap")
        if descriptor:
            data["descriptor_str"] = descriptor.strip()[1:-1].strip() if descriptor.strip().startswith("{") \
                else descriptor
        if not data.get("descriptor_str"):
            raise InputError(f"model {model.model_id!r}: its stored fit settings name no GAP descriptor; "
                             "it cannot be refitted")
        if data.get("e0") is not None:
            data.pop("e0_method", None)
        return FitRecipe("gap", GapModel(), Refit.model_validate(data), virials, seed)
    if model.backend == "mace":
        fields = {k: v for k, v in settings.items() if k in MaceModel.model_fields}
        if "backend" not in fields:
            raise InputError(f"model {model.model_id!r}: its stored fit settings hold no MACE model block; "
                             "it cannot be refitted")
        fields["initial_model"] = None
        if fields.get("foundation_model") and not Path(fields["foundation_model"]).is_file():
            raise InputError(f"model {model.model_id!r}: its foundation model {fields['foundation_model']!r} is "
                             "not here; it cannot be refitted the same way")
        return FitRecipe("mace", MaceModel.model_validate(fields), Refit(), virials, seed)
    raise InputError(f"model {model.model_id!r}: backend {model.backend!r} cannot be refitted")


def kfold_indices(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint folds covering ``range(n)`` after a seeded shuffle; sizes differ by at most one.

    Raises
    ------
    InputError
        If ``k < 2`` or ``k > n``.
    """
    if k < 2:
        raise InputError(f"--cv: K must be at least 2, got {k}")
    if k > n:
        raise InputError(f"--cv: K={k} folds need at least {k} training frames, the model has {n}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, k)]


def nested_subsets(n: int, sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    """Index sets of the given sizes, each containing the smaller ones (prefixes of one seeded shuffle)."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[:s]) for s in sizes]


def learning_curve_sizes(n: int, points: int = 5, smallest: int = 2) -> list[int]:
    """Up to ``points`` training-set sizes from ``smallest`` to ``n``, evenly spaced on a log scale."""
    if n < smallest:
        return [n]
    sizes = np.unique(np.round(np.geomspace(smallest, n, points)).astype(int))
    return [int(s) for s in sizes]


def spread(per_fold: list[dict]) -> dict:
    """Mean, standard deviation (ddof=1), min and max of each metric over folds (None where missing)."""
    out = {}
    for key in METRIC_KEYS:
        values = [m[key] for m in per_fold if m.get(key) is not None]
        if not values:
            out[key] = None
            continue
        arr = np.asarray(values, dtype=float)
        out[key] = {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
                    "min": float(arr.min()), "max": float(arr.max())}
    return out


def _fit_and_predict(recipe: FitRecipe, train: list[FrameDoc], test: list[FrameDoc], workdir: Path,
                     num_threads: int | None):
    """Fit a sub-model on ``train`` and return its predictions on ``test`` and the fit's wall time."""
    backend = get_backend(recipe.backend)
    atoms = [frame_to_atoms(f) for f in train]
    if not recipe.virials:  # as the campaign's refits: virial labels only when it trains on them
        for a in atoms:
            a.info.pop(VIRIAL_KEY, None)
    result = backend.fit(atoms, workdir, recipe.model, recipe.refit, num_threads=num_threads, seed=recipe.seed)
    calc = backend.calculator(result.model_dir)
    return predict(calc, test), result.seconds


def _campaign_config(store, model: ModelDoc) -> CampaignConfig | None:
    if model.campaign is None:
        return None
    doc = store.get_campaign(model.campaign)
    return CampaignConfig.model_validate(doc.config) if doc is not None else None


def cross_validate(store, model_id: str, k: int, workdir: Path, seed: int = 0, num_threads: int | None = None,
                   save: bool = True) -> dict:
    """k-fold cross-validation of a stored model on its own training frames (see :data:`DEFINITIONS`).

    Returns (and stores, key ``"<model_id>:cv<k>"``) a validation document with the pooled metrics
    at the top level (``benchmark`` ``cv<k>``), ``folds`` (per fold: its frame ids, fit seconds,
    metrics), ``spread`` (mean/std/min/max over folds), ``definitions`` and ``fit`` (the settings).
    """
    model = store.get_model(model_id)
    recipe = fit_recipe(model, _campaign_config(store, model))
    frames = store.get_frames(list(model.training_frame_ids))
    folds = kfold_indices(len(frames), k, seed)
    workdir = Path(workdir)
    predicted, reference, fold_docs = [None] * len(frames), reference_labels(frames), []
    for i, test_idx in enumerate(folds):
        test_set = set(test_idx.tolist())
        train = [f for j, f in enumerate(frames) if j not in test_set]
        test = [frames[j] for j in test_idx]
        preds, seconds = _fit_and_predict(recipe, train, test, workdir / f"fold{i}", num_threads)
        for j, p in zip(test_idx, preds):
            predicted[j] = p
        m = metrics(compare(preds, [reference[j] for j in test_idx]))
        fold_docs.append({"fold": i, "n_train": len(train), "n_test": len(test), "fit_seconds": seconds,
                          "frame_ids": [f.frame_id for f in test], **m})
        logger.info("cv fold %d/%d of %s: force RMSE %.3g eV/Å", i + 1, k, model_id, m["force_rmse"])
    pooled = summarise(compare(predicted, reference))
    name = f"cv{k}"
    doc = {
        "validation_id": f"{model_id}:{name}", "model_id": model_id, "campaign": model.campaign,
        "benchmark": name, "kind": "cv", "k": k, "seed": seed, **pooled,
        "folds": fold_docs, "spread": spread(fold_docs), "fit": recipe.describe(),
        "definitions": {key: DEFINITIONS[key] for key in (*_SHOWN, "cv")},
        "created_at": now().isoformat(), "schema_version": 1,
    }
    if save:
        save_validation(store, doc)
    return doc


_SHOWN = ("energy_rmse_per_atom", "energy_mae_per_atom", "force_rmse", "force_mae", "virial_rmse_per_atom")


def held_out_frames(store, model: ModelDoc, benchmark: str) -> tuple[list[FrameDoc], str]:
    """The fixed held-out frames of a learning curve and how they were chosen.

    ``checks``: the DFT check frames of the model's campaign that it was not trained on; when fewer
    than two are left (every label is trained on, ``refit.train_on: all``) the later half of the
    campaign's check frames by MD step, which are then left out of every training subset. Another
    name: the benchmark set's frames (those in the model's training set are left out of the subsets).
    """
    if benchmark != CHECKS:
        frames = benchmark_frames(store, benchmark)
        return frames, f"benchmark set {benchmark!r} ({len(frames)} frames)"
    if model.campaign is None:
        raise InputError(f"model {model.model_id!r} belongs to no campaign; --benchmark {CHECKS} needs a campaign "
                         "model")
    checks = sorted((f for f in store.frames_of(model.campaign) if f.source == "check" and not f.flags),
                    key=lambda f: f.md_step or 0)
    trained = set(model.training_frame_ids)
    untrained = [f for f in checks if f.frame_id not in trained]
    if len(untrained) >= 2:
        return untrained, f"the {len(untrained)} check frames of campaign {model.campaign} the model was not trained on"
    later = checks[len(checks) // 2:]
    if len(later) < 1:
        raise InputError(f"campaign {model.campaign!r} has no check frames for --benchmark {CHECKS}")
    steps = f"MD steps {later[0].md_step}-{later[-1].md_step}"
    return later, (f"the later half of the check frames of campaign {model.campaign} ({len(later)} frames, "
                   f"{steps}), left out of every training subset")


def learning_curve(store, model_id: str, benchmark: str, workdir: Path, sizes: list[int] | None = None,
                   seed: int = 0, num_threads: int | None = None, save: bool = True) -> dict:
    """Error on a fixed held-out set against training-set size (see :data:`DEFINITIONS`).

    The training pool is the model's training frames minus the held-out frames
    (:func:`held_out_frames`); ``sizes`` (default: :func:`learning_curve_sizes`) must lie in
    ``1..len(pool)``. Stored as validation ``"<model_id>:learning-curve:<benchmark>"``.
    """
    model = store.get_model(model_id)
    recipe = fit_recipe(model, _campaign_config(store, model))
    test, how = held_out_frames(store, model, benchmark)
    test_ids = {f.frame_id for f in test}
    pool = [f for f in store.get_frames(list(model.training_frame_ids)) if f.frame_id not in test_ids]
    if not pool:
        raise InputError(f"model {model_id!r}: every training frame is in the held-out set {benchmark!r}")
    sizes = sorted(set(sizes)) if sizes else learning_curve_sizes(len(pool))
    bad = [s for s in sizes if not 1 <= s <= len(pool)]
    if bad:
        raise InputError(f"--sizes: {bad[0]} is outside 1..{len(pool)} (training frames not in the held-out set)")
    reference = reference_labels(test)
    points = []
    for size, idx in zip(sizes, nested_subsets(len(pool), sizes, seed)):
        train = [pool[j] for j in idx]
        preds, seconds = _fit_and_predict(recipe, train, test, Path(workdir) / f"n{size}", num_threads)
        m = metrics(compare(preds, reference))
        points.append({"n_train": size, "fit_seconds": seconds, "frame_ids": [f.frame_id for f in train], **m})
        logger.info("learning curve of %s: %d frames -> force RMSE %.3g eV/Å", model_id, size, m["force_rmse"])
    name = f"learning-curve:{benchmark}"
    doc = {
        "validation_id": f"{model_id}:{name}", "model_id": model_id, "campaign": model.campaign,
        "benchmark": name, "kind": "learning_curve", "held_out": benchmark, "held_out_description": how,
        "n_frames": len(test), "held_out_frame_ids": sorted(test_ids), "n_pool": len(pool), "seed": seed,
        "points": points, "fit": recipe.describe(),
        "definitions": {key: DEFINITIONS[key] for key in (*_SHOWN, "learning_curve")},
        "created_at": now().isoformat(), "schema_version": 1,
    }
    if save:
        save_validation(store, doc)
    return doc


def parse_sizes(text: str | None) -> list[int] | None:
    """``--sizes 2,4,8`` (commas or spaces) as integers; None for none given."""
    if text is None or not text.strip():
        return None
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--sizes: {text!r} is not a list of whole numbers such as 2,4,8") from None
    if any(s < 1 for s in sizes):
        raise InputError(f"--sizes: sizes must be >= 1, got {text!r}")
    return sizes

