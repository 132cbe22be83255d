"""GAP model settings (the YAML's ``model: {backend: gap, ...}`` block).

Only pydantic here: :mod:`otf_flows.campaign` imports this module; the backend
(:mod:`otf_flows.ml.gap.fit`) imports quippy lazily.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from otf_flows.yaml_config import Strict

__all__ = ["GapModel"]


class GapModel(Strict):
    """GAP via quippy-ase's ``gap_fit``: each fit is from scratch on all training data; the fit
    settings are in the ``refit`` block (default_sigma, descriptor_str, extra_gap_opts, e0)."""

    backend: Literal["gap"] = Field("gap", description="ML backend; GAP via quippy-ase's gap_fit.")
    preset: Literal["fast", "default", "l-si", "al2o3", "a-c"] = Field(
        "fast", description="Descriptor preset used when refit.descriptor_str is null: 'fast' (species-generic "
        "soap_turbo + 5 Å two-body, our own; the lowest force error of the presets at ~1/4.8 of l-si's cost, "
        "benchmarks/README.md, GAP presets), 'default' (the cheapest: a small SOAP), or the paper's Table II "
        "presets 'l-si', 'al2o3', 'a-c'."
    )
    num_threads: int | None = Field(None, ge=1, description="OpenMP threads of gap_fit and quip (default: all).")
    initial_model: str | None = Field(
        None, description="Start from this stored model id instead of a first fit (with num_initial_steps 0)."
    )
