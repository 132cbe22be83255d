"""On-the-fly machine-learned molecular dynamics as a jobflow workflow.

The scheme is the CASTEP+ML "hybrid-md" one (Stenczel et al., J. Chem. Phys. 2023):
ML-driven MD, DFT checks at adaptive intervals, refits when tolerances are missed.
"""

__version__ = "0.1.0"

__all__ = ["OtfMDMaker", "__version__"]


def __getattr__(name: str):
    """``from otf_flows import OtfMDMaker`` without importing jobflow and atomate2 on ``import otf_flows``
    (the CLI starts faster)."""
    if name == "OtfMDMaker":
        from otf_flows.flows.maker import OtfMDMaker

        return OtfMDMaker
    raise AttributeError(f"module 'otf_flows' has no attribute {name!r}")
