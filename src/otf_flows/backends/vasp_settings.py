"""VASP reference settings (the YAML's ``reference: {engine: vasp, ...}`` block)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from otf_flows._config_base import Strict


class VaspReference(Strict):
    """VASP through atomate2's StaticMaker and custodian."""

    engine: Literal["vasp"] = "vasp"
    retries: int = Field(1, ge=0, description="Extra attempts after a failed reference calculation.")
