"""On-the-fly machine-learned molecular dynamics as a jobflow workflow.

The scheme is the CASTEP+ML "hybrid-md" one (Stenczel et al., J. Chem. Phys. 2023):
ML-driven MD, DFT checks at adaptive intervals, refits when tolerances are missed.
"""

__version__ = "0.1.0"

from otf_flows.flows.maker import OtfMDMaker  # noqa: E402 - after __version__, which modules may read

__all__ = ["OtfMDMaker", "__version__"]
