"""Cluster commands: submit a campaign as a self-resubmitting batch allocation (SLURM, PBS) or to a FireWorks
LaunchPad (through qlaunch)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from otf_flows.campaign import load_config
from otf_flows.commands import JsonOpt, StoreOpt, app, open_store_arg, print_json, print_table
from otf_flows.errors import InputError
from otf_flows.faults import failpoint
from otf_flows.flows.lifecycle import prepare_campaign
from otf_flows.managers import allocation
from otf_flows.managers.allocation import end_allocation, record_next, start_allocation
from otf_flows.managers.fireworks import load_launchpad, submit_campaign
from otf_flows.managers.local import _runs_dir
from otf_flows.reference.registry import get_engine
from otf_flows.settings import otf_settings


@app.command()
def submit(
    config: Path = typer.Argument(..., help="Campaign YAML."),
    launchpad: Optional[Path] = typer.Option(
        None, "--launchpad", "-l", help="FireWorks mode: the LaunchPad YAML (my_launchpad.yaml)."),
    batch: Optional[str] = typer.Option(
        None, "--batch", help="Allocation mode: slurm or pbs; one batch allocation runs the campaign and "
        "resubmits itself."),
    walltime: Optional[str] = typer.Option(None, "--time", help="Allocation mode: walltime HH:MM:SS of each "
                                           "allocation."),
    nodes: int = typer.Option(1, "--nodes", min=1, help="Allocation mode: nodes per allocation."),
    ntasks: Optional[int] = typer.Option(None, "--ntasks", min=1, help="Allocation mode: MPI tasks per allocation "
                                         "({ntasks} in reference.cp2k_cmd)."),
    queue: Optional[str] = typer.Option(None, "--partition", "--queue", help="Allocation mode: partition (SLURM) "
                                        "or queue (PBS)."),
    account: Optional[str] = typer.Option(None, "--account", help="Allocation mode: account/project to charge."),
    resubmit: int = typer.Option(10, "--resubmit", min=0, help="Allocation mode: resubmit at most this many "
                                 "times (1 + K allocations)."),
    grace: int = typer.Option(120, "--grace", min=1, help="Allocation mode: seconds before the walltime at which "
                              "the campaign stops (SLURM's warning signal, PBS's stop time)."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", min=0, help="Allocation mode: also stop each "
                                             "allocation after this many seconds of `otf run`."),
    template: Optional[Path] = typer.Option(None, "--template", help="Allocation mode: an edited copy of "
                                            "launchers/allocation.slurm or .pbs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Allocation mode: write the script and print it; "
                                 "register and submit nothing."),
    check_engine: bool = typer.Option(False, "--check-engine", help="Check now that the DFT program runs on "
                                      "this machine (by default the first DFT job checks where it runs)."),
    store: Optional[str] = StoreOpt,
    resume: bool = typer.Option(
        False, "--resume", help="Continue a campaign already in the store (its old workflow or chain must be "
        "finished)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Run the campaign on a cluster: one self-resubmitting allocation (--batch) or FireWorks (--launchpad).

    Allocation mode (--batch slurm|pbs --time HH:MM:SS) writes a batch script from
    launchers/allocation.<batch> (or --template) into the campaign's run directory and submits
    it; each allocation runs `otf run CONFIG --resume`, stops --grace seconds before its
    walltime (exit code 3) and resubmits the script until the campaign is complete, at most
    --resubmit times. `otf status CAMPAIGN` shows the chain.

    FireWorks mode (--launchpad) adds the campaign's jobs to a LaunchPad; workers started by
    qlaunch/rlaunch run them, each kind (dft, md, fit, light) routed by the YAML's `execution:`.

    Either way the store must be reachable from the compute nodes: a directory on a shared file
    system or a mongodb:// URI (docs/tutorials/cluster.md).
    """
    if (launchpad is None) == (batch is None):
        raise InputError("submit: give either --batch slurm|pbs (allocation mode) or --launchpad LP.yaml (FireWorks)")
    cfg = load_config(config)
    st = open_store_arg(store, cfg.store, must_exist=False)
    if check_engine:
        get_engine(cfg.reference, omp_threads=cfg.execution.dft.omp_threads).check_available()
    if batch is not None:
        _submit_batch(cfg, config, st, batch=batch, walltime=walltime, nodes=nodes, ntasks=ntasks, queue=queue,
                      account=account, resubmit=resubmit, grace=grace, stop_after=stop_after, template=template,
                      dry_run=dry_run, resume=resume, as_json=as_json)
        return

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
        f"next: start workers for {', '.join(kinds)} (docs/tutorials/cluster.md, section 4): a pilot allocation,\n"
        f"  OTF_PILOT_WORKERS=\"{' '.join(kinds)}\" sbatch pilot.slurm   (or qsub -V pilot.pbs)\n"
        "  or one qlaunch loop per category (-m counts all your jobs in the partition)\n"
        f"watch: lpad -l {launchpad} get_wflows -d more;  otf status {result['campaign']} --store {result['store']}\n"
    )


def _submit_batch(cfg, config: Path, st, *, batch: str, walltime: str | None, nodes: int, ntasks: int | None,
                  queue: str | None, account: str | None, resubmit: int, grace: int, stop_after: int | None,
                  template: Path | None, dry_run: bool, resume: bool, as_json: bool) -> None:
    """Allocation mode of `otf submit`: register, write the script, submit it."""
    if walltime is None:
        raise InputError("--time: allocation mode needs the walltime of each allocation, e.g. --time 24:00:00")
    location = st.location if st.kind != "embedded" else str(st.path)
    if st.kind == "memory":
        raise InputError(f"--store: {location} lives in this process only; a batch job needs a directory or "
                         "a mongodb:// URI")
    alloc_dir = _runs_dir(st, cfg.name) / "allocations"
    settings = allocation.BatchSettings(
        scheduler=batch, time=walltime, campaign=cfg.name, config=config.resolve(), store=location,
        workdir=Path.cwd(), alloc_dir=alloc_dir, chain=allocation.next_chain(st, cfg.name, alloc_dir), nodes=nodes, ntasks=ntasks, queue=queue, account=account,
        grace_s=grace, max_allocations=resubmit + 1, stop_after_s=stop_after,
    )
    existing = None if dry_run else st.get_campaign(cfg.name)
    if not dry_run:
        prepare_campaign(cfg, st, resume=resume)  # the resume rules, and nothing written on bad input
    script = allocation.write_script(settings, template)
    result = {"campaign": cfg.name, "store": st.describe(), "scheduler": batch, "script": str(script),
              "chain": settings.chain, "max_allocations": settings.max_allocations, "job_id": None}
    if dry_run:
        if as_json:
            print_json({**result, "text": script.read_text()})
        else:
            sys.stdout.write(script.read_text())
            sys.stderr.write(f"dry run: wrote {script}; submit it with {allocation.SCHEDULERS[batch][0]} {script}\n")
        return
    try:
        job_id = allocation.submit_script(batch, script, settings.workdir)
    except BaseException:
        if existing is None:  # nothing queued: the campaign may be submitted again as new
            st.collection("campaigns").remove_docs({"name": cfg.name})
        raise
    st.update_campaign(cfg.name, status="created" if existing is None else "stopped",
                       message=f"waiting for batch job {job_id} (allocation mode, chain {settings.chain})")
    result["job_id"] = job_id
    if as_json:
        print_json(result)
        return
    sys.stderr.write(
        f"campaign {cfg.name}: submitted {script} as batch job {job_id} (chain {settings.chain}, "
        f"at most {settings.max_allocations} allocations of {walltime})\n"
        f"store: {result['store']}\n"
        f"watch: otf status {cfg.name} --store {location};  logs: {settings.alloc_dir}/allocation-*.log\n"
    )


allocation_app = typer.Typer(help="What the allocation-mode batch script records (not for users).",
                             no_args_is_help=True)
app.add_typer(allocation_app, name="allocation", hidden=True)


@allocation_app.command("start")
def allocation_start(
    campaign: str = typer.Argument(...), store: str = typer.Option(..., "--store"),
    scheduler: str = typer.Option(..., "--scheduler"), job_id: str = typer.Option(..., "--job-id"),
    chain: int = typer.Option(..., "--chain"), max_allocations: int = typer.Option(..., "--max-allocations"),
    log_dir: Path = typer.Option(..., "--log-dir"),
) -> None:
    """Record the start of an allocation; print the path of its log file."""
    ntasks = otf_settings().ntasks or ""
    doc = start_allocation(open_store_arg(store), campaign, scheduler=scheduler, job_id=job_id, chain=chain,
                           max_allocations=max_allocations, log_dir=log_dir,
                           ntasks=int(ntasks) if ntasks.isdigit() else None)
    failpoint("allocation.started")
    sys.stdout.write(doc.log + "\n")


@allocation_app.command("end")
def allocation_end(
    campaign: str = typer.Argument(...), store: str = typer.Option(..., "--store"),
    job_id: str = typer.Option(..., "--job-id"), exit_code: int = typer.Option(..., "--exit-code"),
    signal: str = typer.Option("none", "--signal", help="none, warning or term"),
) -> None:
    """Record the end of an allocation; print `resubmit`, `completed` (the campaign is complete) or `end`."""
    if signal not in ("none", "warning", "term"):
        raise InputError(f"--signal: {signal!r} is not one of none, warning, term")
    doc = end_allocation(open_store_arg(store), campaign, job_id=job_id, exit_code=exit_code, signal=signal)
    sys.stderr.write(f"otf allocation {doc.number}: {doc.reason}\n")
    decision = "resubmit" if doc.resubmit else "completed" if doc.reason == "completed" else "end"
    sys.stdout.write(decision + "\n")


@allocation_app.command("next")
def allocation_next(
    campaign: str = typer.Argument(...), store: str = typer.Option(..., "--store"),
    job_id: str = typer.Option(..., "--job-id"), next_job: str = typer.Option(..., "--next-job"),
) -> None:
    """Record the job id of the resubmitted allocation."""
    st = open_store_arg(store)
    record_next(st, campaign, job_id=job_id, next_job_id=next_job)
    st.update_campaign(campaign, message=f"waiting for batch job {next_job} (allocation mode)")


def _log_to_stderr(lp) -> None:
    """FireWorks streams LaunchPad messages to stdout; stdout is ours (``--json``), and they must not
    reach the CLI's root handler a second time."""
    for handler in lp.m_logger.handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
    lp.m_logger.propagate = False
