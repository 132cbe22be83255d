"""Follow a campaign's settings (the ``CampaignConfig``) through the package during ``otf run``.

Runs ``otf run`` in process on a tiny EMT campaign (2 initial steps, 1 check) under
:func:`sys.setprofile` and records every call into a function of ``otf_flows`` whose arguments hold
a ``CampaignConfig`` (as an argument, or as the ``config`` attribute of one such as a Maker's
``self``). The path is the sequence of those functions' modules; consecutive calls in one module
are one stay. Printed:

- ``modules``: distinct modules on the path;
- ``stays``: the path's length (runs of one module);
- ``climbs``: steps of the path to a module on a higher layer (nearer the command line) than the
  one before, layers as in tests/test_layout.py's ``LAYERS`` (unknown modules count as the lowest);
- ``returns``: steps to a module the path had already left.

Usage: ``python scripts/trace_config.py [--path] [--walkers]`` (``--path`` prints the path, one stay a
line; ``--walkers`` runs the campaign as two walkers at two temperatures).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: Layers, top (the command line) first; a module is on the layer of its longest matching prefix.
#: Old and new module names both appear so that the numbers before and after the layout compare.
LAYERS = [
    ("otf_flows.cli", "otf_flows.__main__", "otf_flows.commands"),
    ("otf_flows.managers",),
    ("otf_flows.flows",),
    ("otf_flows.jobs",),
    ("otf_flows.fit_export", "otf_flows.fitting", "otf_flows.validation", "otf_flows.report"),
    ("otf_flows.md", "otf_flows.backends", "otf_flows.reference", "otf_flows.ml", "otf_flows.store",
     "otf_flows.structures", "otf_flows.data", "otf_flows.frames", "otf_flows.trajectory"),
    ("otf_flows.campaign", "otf_flows.yaml_config", "otf_flows.config_base", "otf_flows.labels",
     "otf_flows.settings", "otf_flows.schemas", "otf_flows.errors"),
]

CONFIG = {
    "name": "trace",
    "structure": {"builder": "bulk", "element": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True},
    "md": {"ensemble": "nvt_langevin", "temperature_K": 600, "timestep_fs": 2.0, "total_steps": 4,
           "friction_per_fs": 0.02, "seed": 7},
    "reference": {"engine": "ase", "calculator": "ase.calculators.emt.EMT"},
    "model": {"preset": "default"},
    "num_initial_steps": 2,
    "check_interval": 2,
    "tolerances": {"ediff": 0.002, "fmax": 0.3},
    "refit": {"default_sigma": "0.001 0.05 0.05 0.0", "extra_gap_opts": "sparse_jitter=1.0e-8"},
    "validation": {"every": "end"},
}


def layer(module: str) -> int:
    best, found = -1, len(LAYERS) - 1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    return found


def trace(argv: list[str]) -> list[str]:
    from otf_flows.campaign import CampaignConfig
    from otf_flows.cli import main

    path: list[str] = []

    def holds(frame) -> bool:
        code = frame.f_code
        for name in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
            value = frame.f_locals.get(name)
            if isinstance(value, CampaignConfig) or isinstance(getattr(value, "config", None), CampaignConfig):
                return True
        return False

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if module.startswith("otf_flows") and holds(frame) and (not path or path[-1] != module):
            path.append(module)

    sys.setprofile(profile)
    try:
        code = main(argv)
    finally:
        sys.setprofile(None)
    if code != 0:
        raise SystemExit(f"otf run exited {code}")
    return path


def summary(path: list[str]) -> dict:
    climbs = sum(1 for a, b in itertools.pairwise(path) if layer(b) < layer(a))
    returns = sum(1 for i, m in enumerate(path) if m in path[: i - 1] and i > 0)
    return {"modules": len(set(path)), "stays": len(path), "climbs": climbs, "returns": returns}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "trace.yaml"
        data = dict(CONFIG)
        if "--walkers" in sys.argv:
            data["walkers"] = [{"name": "cold", "md": {"temperature_K": 300}}, {"name": "hot", "md": {"seed": 8}}]
        cfg.write_text(yaml.safe_dump(data))
        path = trace(["run", str(cfg), "--store", str(Path(tmp) / "store")])
    if "--path" in sys.argv:
        for module in path:
            print(f"  {layer(module)} {module}")
    print(" ".join(f"{k}={v}" for k, v in summary(path).items()))
