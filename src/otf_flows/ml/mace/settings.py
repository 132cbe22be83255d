"""MACE model settings (the YAML's ``model: {backend: mace, ...}`` block).

Only pydantic here: :mod:`otf_flows.campaign` imports this module; the backend
(:mod:`otf_flows.ml.mace.backend`) imports torch lazily.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from otf_flows.yaml_config import Strict

__all__ = ["MaceModel"]

_SYMBOL = re.compile(r"^[A-Z][a-z]?$")


class MaceModel(Strict):
    """MACE via mace-torch on CPU: the first fit trains a small model from scratch (or from
    ``foundation_model``); every refit fine-tunes the parent model's weights on all training data."""

    backend: Literal["mace"] = Field(description="ML backend; MACE via mace-torch (mace_run_train).")
    num_threads: int | None = Field(
        None, ge=1, description="torch threads of training (OMP_NUM_THREADS of mace_run_train) and of ML-MD "
        "(torch.set_num_threads) (default: torch's, all cores)."
    )
    initial_model: str | None = Field(
        None, description="Start from this stored MACE model id instead of a first fit (with num_initial_steps 0)."
    )
    foundation_model: str | None = Field(
        None, description="Local path of a MACE model file (relative to the YAML) whose weights the first fit "
        "fine-tunes instead of training from scratch; nothing is downloaded, so a named foundation model "
        "(mace-mp 'small', ...) must be fetched beforehand and given as its file. Its r_max, channels and L win "
        "over the settings below.",
    )
    r_max_A: float = Field(4.5, gt=0, le=12, description="Radial cutoff (Å).")
    num_channels: int = Field(16, ge=1, le=256, description="Channels of the hidden features.")
    max_L: Literal[0, 1, 2] = Field(0, description="Largest L of the equivariant hidden features (0: invariant).")
    num_interactions: int = Field(2, ge=1, le=4, description="Message-passing layers.")
    correlation: int = Field(2, ge=1, le=4, description="Correlation order of the product basis (body order - 1).")
    num_radial_basis: int = Field(8, ge=2, le=32, description="Bessel functions of the radial basis.")
    max_num_epochs: int = Field(60, ge=1, description="Epochs of the first fit (from scratch).")
    finetune_epochs: int = Field(20, ge=1, description="Epochs of each refit (fine-tuning the parent model).")
    batch_size: int = Field(4, ge=1, description="Frames per training batch.")
    lr: float = Field(0.01, gt=0, description="Learning rate of the first fit (Adam/AMSGrad).")
    finetune_lr: float = Field(0.005, gt=0, description="Learning rate of a refit.")
    energy_weight: float = Field(1.0, ge=0, description="Weight of the energy term of the loss.")
    forces_weight: float = Field(100.0, ge=0, description="Weight of the force term of the loss.")
    virials_weight: float = Field(1.0, ge=0, description="Weight of the virial term (when refits train on virials).")
    default_dtype: Literal["float64", "float32"] = Field(
        "float64", description="Precision of training and of the model (float32 is ~2x faster, less exact forces)."
    )
    e0s: Literal["average"] | dict[str, float] = Field(
        "average", description="Isolated-atom energies (eV): 'average' (least squares over the training data) or "
        "a mapping {symbol: eV} covering every element. A refit keeps its parent's E0s.",
    )

    committee: int = Field(
        1, ge=1, le=4, description="Members of a committee of MACE models (1: one model, no uncertainty; 2-4: each fit "
        "trains this many members with seeds seed, seed+1, ..., each refit fine-tunes member k from the parent's "
        "member k; the committee's spread of local energies is the uncertainty of uncertainty.enabled)."
    )
    committee_md: Literal["first", "mean"] = Field(
        "first", description="What drives ML-MD with a committee: 'first' = member 0 (the other members are evaluated "
        "only at the frames where the uncertainty is measured, forward pass only), 'mean' = the committee mean of "
        "energy, forces and stress (every member at every step: committee times the cost)."
    )

    @field_validator("e0s")
    @classmethod
    def _symbols(cls, v):
        if isinstance(v, dict):
            bad = [k for k in v if not _SYMBOL.match(k)]
            if bad:
                raise ValueError(f"keys must be chemical symbols such as 'Cu', got {bad[0]!r}")
        return v
