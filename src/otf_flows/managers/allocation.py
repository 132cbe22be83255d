"""Allocation mode: one batch allocation runs ``otf run --resume`` and resubmits itself until the end.

``otf submit CONFIG --batch slurm|pbs --time HH:MM:SS`` registers the campaign, writes a batch
script from a template (``launchers/allocation.slurm``, ``launchers/allocation.pbs``, or the
user's ``--template``) into ``<run directory>/allocations/`` and submits it. In the allocation
the script runs ``otf run CONFIG --resume``, which stops between two jobs before the walltime:

- SLURM sends the batch shell ``USR1`` ``grace_s`` seconds before the time limit
  (``--signal=B:USR1@grace_s``); the script forwards it to ``otf run`` as SIGTERM;
- PBS has no such warning: ``otf run --stop-after`` stops ``grace_s`` before the walltime.

``otf run`` then exits with :data:`~otf_flows.managers.stopping.EXIT_STOPPED` (3), and the script
submits itself again (with a dependency on the ending job, so two allocations of one campaign
never overlap) while the chain has fewer than ``max_allocations`` allocations. A SIGTERM to the
job itself (``scancel``, ``qdel``, the hard walltime) stops the run resumably too, but ends the
chain. Each allocation is recorded in the store's ``allocations`` collection (``otf status``
shows the chain) and keeps its own numbered log file.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from otf_flows.errors import InputError, OtfError
from otf_flows.managers.stopping import EXIT_STOPPED
from otf_flows.schemas.documents import AllocationDoc, now

logger = logging.getLogger(__name__)

SCHEDULERS = {"slurm": ("sbatch", "--parsable"), "pbs": ("qsub",)}
"""Submit command of each scheduler (the job id is its standard output)."""

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*(\|\s*q\s*)?\}\}")
_DIRECTIVE = re.compile(r"^\s*#(SBATCH|PBS)\b")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")


def launchers_dir() -> Path:
    """The templates for batch scripts and FireWorks, shipped in the package (``otf_flows/launchers``; in a
    source checkout also reached as ``launchers/``)."""
    return Path(str(resources.files("otf_flows") / "launchers"))


def walltime_seconds(text: str) -> int:
    """Seconds of a walltime ``HH:MM:SS`` or ``D-HH:MM:SS``; raises :class:`InputError`."""
    match = _TIME.match(text.strip())
    if not match:
        raise InputError(f"--time: {text!r} is not a walltime HH:MM:SS (or D-HH:MM:SS)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise InputError(f"--time: {text!r} must be longer than 0 s")
    return total


@dataclass
class BatchSettings:
    """What ``otf submit --batch`` puts into the batch script (seconds, counts, paths)."""

    scheduler: str
    time: str
    campaign: str
    config: Path
    store: str
    workdir: Path
    alloc_dir: Path
    chain: int = 1
    nodes: int = 1
    ntasks: int | None = None
    queue: str | None = None
    account: str | None = None
    grace_s: int = 120
    max_allocations: int = 11
    stop_after_s: int | None = None
    otf: list[str] = field(default_factory=lambda: [sys.executable, "-m", "otf_flows"])

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise InputError(f"--batch: {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        wall = walltime_seconds(self.time)
        if not 0 < self.grace_s < wall:
            raise InputError(f"--grace: {self.grace_s} s must be > 0 and shorter than --time {self.time} ({wall} s)")

    @property
    def script(self) -> Path:
        return self.alloc_dir / f"chain-{self.chain:02d}.{self.scheduler}"

    @property
    def stop_grace_s(self) -> int:
        """Seconds the running job may take after the stop request: the grace time less a margin for
        recording the allocation and resubmitting."""
        return max(1, self.grace_s - min(30, self.grace_s // 4))

    def values(self) -> dict[str, object]:
        """The template's placeholders and their values (None: not set)."""
        ppn = math.ceil(self.ntasks / self.nodes) if self.ntasks else None
        return {
            "job_name": f"otf-{self.campaign}"[:64],
            "time": self.time,
            "walltime_s": walltime_seconds(self.time),
            "nodes": self.nodes,
            "ntasks": self.ntasks,
            "ntasks_default": self.ntasks or 1,
            "ppn": ppn,
            "partition": self.queue,
            "queue": self.queue,
            "account": self.account,
            "grace_s": self.grace_s,
            "stop_grace_s": self.stop_grace_s,
            "stop_after_s": "" if self.stop_after_s is None else self.stop_after_s,
            "campaign": self.campaign,
            "config": str(self.config),
            "store": self.store,
            "workdir": str(self.workdir),
            "alloc_dir": str(self.alloc_dir),
            "script": str(self.script),
            "chain": self.chain,
            "max_allocations": self.max_allocations,
            "scheduler": self.scheduler,
            "otf": shlex.join(self.otf),
        }


def render_script(template: str, values: dict[str, object]) -> str:
    """Fill ``{{name}}`` (as it is) and ``{{name|q}}`` (shell-quoted) placeholders of a batch template.

    An ``#SBATCH``/``#PBS`` line whose placeholder has no value (None) is left out; anywhere else
    a placeholder without a value, or one not in ``values``, is an :class:`InputError`.
    """
    lines = []
    for number, line in enumerate(template.splitlines(keepends=True), 1):
        names = [m.group(1) for m in _PLACEHOLDER.finditer(line)]
        unknown = [n for n in names if n not in values]
        if unknown:
            raise InputError(f"--template: line {number} has the unknown placeholder {{{{{unknown[0]}}}}}; "
                             f"known: {', '.join(sorted(values))}")
        missing = [n for n in names if values[n] is None]
        if missing:
            if _DIRECTIVE.match(line):
                continue
            raise InputError(f"--template: line {number} needs {{{{{missing[0]}}}}}, which has no value here")

        def fill(match: re.Match) -> str:
            value = str(values[match.group(1)])
            return shlex.quote(value) if match.group(2) else value

        lines.append(_PLACEHOLDER.sub(fill, line))
    return "".join(lines)


def write_script(settings: BatchSettings, template: Path | None = None) -> Path:
    """Render the template (default ``launchers/allocation.<scheduler>``) into ``settings.script``."""
    path = Path(template) if template is not None else launchers_dir() / f"allocation.{settings.scheduler}"
    if not path.is_file():
        raise InputError(f"--template: {str(path)!r} does not exist"
                         + ("" if template is not None else "; pass --template with a copy of launchers/"
                            f"allocation.{settings.scheduler}"))
    text = render_script(path.read_text(), settings.values())
    settings.alloc_dir.mkdir(parents=True, exist_ok=True)
    settings.script.write_text(text)
    settings.script.chmod(0o755)
    return settings.script


def submit_script(scheduler: str, script: Path, workdir: Path) -> str:
    """Submit ``script`` with sbatch/qsub from ``workdir``; return the job id."""
    command = [*SCHEDULERS[scheduler], str(script)]
    if shutil.which(command[0]) is None:
        raise OtfError(f"{command[0]} is not on PATH: run `otf submit --batch {scheduler}` on a login node of "
                       "the cluster (or use --dry-run to only write the script)")
    out = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
    job_id = out.stdout.strip().split(";")[0]
    if out.returncode != 0 or not job_id:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise OtfError(f"{shlex.join(command)} failed (exit {out.returncode}): {detail[-1] if detail else 'no output'}")
    return job_id


# ---------------------------------------------------------------------- the chain in the store
def allocations(store, campaign: str) -> list[AllocationDoc]:
    """The campaign's allocations, oldest first."""
    docs = [AllocationDoc.model_validate({k: v for k, v in d.items() if k not in ("_id", "last_updated")})
            for d in store.collection("allocations").query({"campaign": campaign})]
    return sorted(docs, key=lambda d: d.number)


def next_chain(store, campaign: str, alloc_dir: Path) -> int:
    """Number of the chain a new ``otf submit --batch`` starts: after every chain that has run (the
    store) or was written (its ``chain-NN`` script in ``alloc_dir``)."""
    numbers = [int(m.group(1)) for p in Path(alloc_dir).glob("chain-*")
               if (m := re.fullmatch(r"chain-(\d+)\.\w+", p.name))]
    if store.kind != "embedded" or (store.path / "db").exists():
        numbers += [d.chain for d in allocations(store, campaign)]
    return max(numbers, default=0) + 1


def _put(store, doc: AllocationDoc) -> None:
    store.collection("allocations").update(doc.model_dump(mode="json"), key="allocation_id")


def start_allocation(store, campaign: str, *, scheduler: str, job_id: str, chain: int, max_allocations: int,
                     log_dir: Path, ntasks: int | None = None, host: str | None = None) -> AllocationDoc:
    """Record the start of an allocation; its log file is ``log_dir/allocation-NNN.log``."""
    camp = store.require_campaign(campaign)
    docs = allocations(store, campaign)
    number = max((d.number for d in docs), default=0) + 1
    doc = AllocationDoc(
        allocation_id=f"{campaign}:alloc:{number:04d}", campaign=campaign, number=number, chain=chain,
        index=1 + sum(d.chain == chain for d in docs), max_allocations=max_allocations, scheduler=scheduler,
        job_id=job_id, host=host or socket.gethostname(), ntasks=ntasks,
        log=str(Path(log_dir) / f"allocation-{number:03d}.log"), step_start=camp.step,
    )
    _put(store, doc)
    return doc


def decide(exit_code: int, signal: str, status: str, index: int, max_allocations: int) -> tuple[bool, str]:
    """Whether the allocation resubmits the script, and why it ended.

    Parameters
    ----------
    exit_code
        Exit code of ``otf run``.
    signal
        What the script received: ``"warning"`` (SLURM's walltime warning), ``"term"`` (SIGTERM to
        the job: scancel, qdel, the hard walltime) or ``"none"``.
    status
        The campaign's status after the run.
    index, max_allocations
        Position of the allocation in its chain, and the chain's limit.
    """
    if signal == "term":
        return False, f"terminated (SIGTERM to the job: cancelled or past its walltime), exit {exit_code}; chain ends"
    if status == "completed":
        return False, "completed"
    # 143: the warning's SIGTERM reached `otf run` before it could stop between jobs (still starting up)
    if exit_code == EXIT_STOPPED or (signal == "warning" and exit_code == 143):
        why = "walltime warning" if signal == "warning" else "stop time reached"
        if index >= max_allocations:
            return False, f"stopped ({why}); resubmit limit reached ({max_allocations} allocations)"
        return True, f"stopped ({why}); resubmitted"
    if exit_code == 2:
        return False, "bad input (exit 2); see the log"
    return False, f"failed (exit {exit_code}); see the log"


def end_allocation(store, campaign: str, *, job_id: str, exit_code: int, signal: str = "none") -> AllocationDoc:
    """Record the end of the campaign's open allocation of batch job ``job_id`` and decide whether to resubmit."""
    doc = _open(store, campaign, job_id)
    camp = store.require_campaign(campaign)
    resubmit, reason = decide(exit_code, signal, camp.status, doc.index, doc.max_allocations)
    if camp.message and exit_code not in (0, EXIT_STOPPED):
        reason = f"{reason}: {camp.message}"
    doc = doc.model_copy(update={"ended_at": now(), "exit_code": exit_code, "step_end": camp.step,
                                 "reason": reason, "resubmit": resubmit})
    _put(store, doc)
    return doc


def record_next(store, campaign: str, *, job_id: str, next_job_id: str) -> AllocationDoc:
    """Record the job id of the allocation the script submitted."""
    doc = _latest(store, campaign, job_id)
    doc = doc.model_copy(update={"next_job_id": next_job_id})
    _put(store, doc)
    return doc


def _latest(store, campaign: str, job_id: str) -> AllocationDoc:
    docs = [d for d in allocations(store, campaign) if d.job_id == job_id]
    if not docs:
        raise InputError(f"--job-id: campaign {campaign!r} has no allocation of batch job {job_id!r}")
    return docs[-1]


def _open(store, campaign: str, job_id: str) -> AllocationDoc:
    doc = _latest(store, campaign, job_id)
    if doc.ended_at is not None:
        raise InputError(f"--job-id: the allocation of batch job {job_id!r} of campaign {campaign!r} has ended")
    return doc


def allocation_rows(docs: list[AllocationDoc]) -> list[dict]:
    """The chain as ``otf status`` shows it."""
    return [{
        "number": d.number, "chain": d.chain, "index": f"{d.index}/{d.max_allocations}", "job_id": d.job_id,
        "scheduler": d.scheduler, "host": d.host, "ntasks": d.ntasks,
        "started_at": d.started_at.isoformat(timespec="seconds"),
        "ended_at": d.ended_at.isoformat(timespec="seconds") if d.ended_at else None,
        "steps": f"{d.step_start}-{d.step_end if d.step_end is not None else '?'}",
        "exit_code": d.exit_code, "reason": d.reason or ("running, or killed before it could record its end"
                                                        if d.ended_at is None else None),
        "resubmit": d.resubmit, "next_job_id": d.next_job_id, "log": d.log,
    } for d in docs]
