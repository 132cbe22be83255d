"""ASE calculators for tests that need a reference with a known defect (importable by dotted path)."""

from __future__ import annotations

from ase.calculators.emt import EMT


class SpikyEMT(EMT):
    """EMT whose forces are multiplied by 1000 on the ``spike_on``-th labelling (counted from 1 in
    this process): a reference that once returns unphysical labels."""

    calls = 0

    def __init__(self, spike_on: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.spike_on = spike_on
        SpikyEMT.calls += 1
        self.spiky = SpikyEMT.calls == spike_on

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        super().calculate(atoms, properties, system_changes)
        if self.spiky:
            self.results["forces"] = self.results["forces"] * 1000.0


class TasksEMT(EMT):
    """EMT that appends, at each labelling, the ``{ntasks}`` a CP2K/VASP run command would get in this
    process to the file ``log`` (one number a line): each concurrent walker's share of the allocation."""

    def __init__(self, log: str = "", **kwargs):
        super().__init__(**kwargs)
        self.log = log

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        from otf_flows.reference.base import run_command

        super().calculate(atoms, properties, system_changes)
        with open(self.log, "a") as fh:
            fh.write(run_command("{ntasks}", "test") + "\n")
