"""Cluster commands: submit a campaign to a FireWorks LaunchPad (SLURM, PBS, ... through qlaunch)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from otf_flows.commands import JsonOpt, StoreOpt, app, open_store_arg, print_json, print_table


@app.command()
def submit(
    config: Path = typer.Argument(..., help="Campaign YAML."),
    launchpad: Path = typer.Option(..., "--launchpad", "-l", help="FireWorks LaunchPad YAML (my_launchpad.yaml)."),
    store: Optional[str] = StoreOpt,
    resume: bool = typer.Option(
        False, "--resume", help="Continue a campaign already in the store (its old workflow must be finished)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Add the campaign to FireWorks; workers started by qlaunch/rlaunch then run its jobs.

    Every job is routed by kind (dft, md, fit, light) to the FireWorks category, worker and
    queue settings of the YAML's `execution:` section (see launchers/ and docs/cluster.md).
    The store must be reachable from the compute nodes: a directory on a shared file system
    or a mongodb:// URI.
    """
    from otf_flows.campaign import load_config
    from otf_flows.managers.fireworks import load_launchpad, submit_campaign

    cfg = load_config(config)
    st = open_store_arg(store, cfg.store, must_exist=False)
    lp = load_launchpad(launchpad)
    _log_to_stderr(lp)
    result = submit_campaign(cfg, st, lp, resume=resume)
    if as_json:
        print_json(result)
        return
    print_table(result["fireworks"], ["fw_id", "name", "kind", "category", "fworker"],
                f"campaign {result['campaign']}: {result['n_fireworks']} fireworks added")
    kinds = sorted({row["category"] for row in result["fireworks"]})
    sys.stderr.write(
        f"store: {result['store']}\n"
        f"next: keep one qlaunch loop per category ({', '.join(kinds)}) running (docs/cluster.md), e.g.\n"
        f"  qlaunch -l {launchpad} -w my_fworker_dft.yaml -q my_qadapter_slurm_dft.yaml "
        "rapidfire --nlaunches infinite -m 1\n"
        f"watch: lpad -l {launchpad} get_wflows -d more;  otf status {result['campaign']} --store {result['store']}\n"
    )

def _log_to_stderr(lp) -> None:
    """FireWorks streams LaunchPad messages to stdout; stdout is ours (``--json``), and they must not
    reach the CLI's root handler a second time."""
    for handler in lp.m_logger.handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
    lp.m_logger.propagate = False
