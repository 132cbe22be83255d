"""MD segments on plain ASE that continue exactly where the previous one stopped.

The state carried between segments is positions, velocities, cell, the step counter and
the thermostat's random-number-generator state; nothing else in ASE's integrators keeps
memory between steps (forces are recomputed from the positions).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units

from otf_flows.labels import virial_from_stress

logger = logging.getLogger(__name__)

__all__ = ["MDState", "SegmentResult", "UncertaintyMonitor", "also_computing", "initial_state", "make_dynamics",
           "run_segment"]


@dataclass
class MDState:
    """Exact MD state. Velocities are in ASE units (Å / ASE time unit)."""

    step: int
    numbers: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    masses: np.ndarray
    rng_state: str | None = None

    def to_atoms(self) -> Atoms:
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.set_masses(self.masses)
        atoms.set_velocities(self.velocities)
        return atoms

    @classmethod
    def from_atoms(cls, atoms: Atoms, step: int, rng_state: str | None) -> MDState:
        return cls(
            step=step,
            numbers=atoms.numbers.copy(),
            positions=atoms.positions.copy(),
            velocities=atoms.get_velocities().copy(),
            cell=np.array(atoms.cell),
            pbc=atoms.pbc.copy(),
            masses=atoms.get_masses().copy(),
            rng_state=rng_state,
        )


def _rng_from_state(state: str | None, seed: int) -> np.random.Generator:
    rng = np.random.Generator(np.random.PCG64(seed))
    if state is not None:
        rng.bit_generator.state = json.loads(state)
    return rng


def _rng_state(rng: np.random.Generator | None) -> str | None:
    return None if rng is None else json.dumps(rng.bit_generator.state)


def initial_state(atoms: Atoms, md, step: int = 0) -> MDState:
    """Maxwell-Boltzmann velocities at ``md.init_temperature_K`` (zero total momentum).

    The thermostat RNG starts from ``md.seed``; velocities use a generator seeded with
    ``md.seed + 1`` so the two streams are independent.
    """
    from ase.md.velocitydistribution import Stationary

    try:  # ASE >= 3.29
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # pragma: no cover - older ASE
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        def thermalize_momenta(atoms, temperature_K, rng):
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

    atoms = atoms.copy()
    temperature = md.init_temperature_K if md.init_temperature_K is not None else md.temperature_K
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(md.seed + 1))
    Stationary(atoms)
    rng_state = _rng_state(np.random.Generator(np.random.PCG64(md.seed))) if md.ensemble == "nvt_langevin" else None
    return MDState.from_atoms(atoms, step, rng_state)


def make_dynamics(atoms: Atoms, md, rng_state: str | None):
    """The ASE integrator for ``md.ensemble`` and its RNG (None if deterministic)."""
    dt = md.timestep_fs * units.fs
    if md.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt), None
    if md.ensemble == "nvt_langevin":
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin

        # the centre of mass is held by a constraint (ASE's recommended replacement of fixcm=True)
        atoms.set_constraint(FixCom())
        rng = _rng_from_state(rng_state, md.seed)
        dyn = Langevin(
            atoms, timestep=dt, temperature_K=md.temperature_K, friction=md.friction_per_fs / units.fs,
            fixcm=False, rng=rng,
        )
        return dyn, rng
    if md.ensemble == "npt_berendsen":
        from ase.md.nptberendsen import NPTBerendsen

        dyn = NPTBerendsen(
            atoms,
            timestep=dt,
            temperature_K=md.temperature_K,
            pressure_au=md.pressure_GPa * units.GPa,
            taut=md.taut_fs * units.fs,
            taup=md.taup_fs * units.fs,
            compressibility_au=md.compressibility_per_GPa / units.GPa,
        )
        return dyn, None
    raise ValueError(f"md.ensemble {md.ensemble!r} is not one of nve, nvt_langevin, npt_berendsen")


@contextmanager
def also_computing(calculator, properties: tuple[str, ...]) -> Iterator[None]:
    """Within the block, every calculation of ``calculator`` also computes ``properties``.

    An MD step asks only for forces; with ``also_computing(calc, ("stress",))`` around the last
    step, the same model call also gives the virial of the segment's last frame (the frame a check
    compares), instead of a second call afterwards. Properties the calculator does not implement
    (``implemented_properties``) are left out.
    """
    extra = [p for p in properties if p in getattr(calculator, "implemented_properties", ())]
    if not extra:
        yield
        return
    own = calculator.__dict__.get("calculate")  # an instance attribute (a wrapper) to put back after
    inner = calculator.calculate

    def calculate(atoms=None, properties=None, *args, **kwargs):
        asked = list(properties or [])
        return inner(atoms, asked + [p for p in extra if p not in asked], *args, **kwargs)

    calculator.calculate = calculate
    try:
        yield
    finally:
        if own is None:
            del calculator.calculate
        else:
            calculator.calculate = own


@dataclass
class UncertaintyMonitor:
    """When and how a segment evaluates the model's uncertainty, and when that ends the segment.

    Parameters
    ----------
    probe
        The model's uncertainty probe (see :class:`otf_flows.ml.gap.fit.GapUncertainty`):
        ``arm()`` makes the next model calculation also compute the uncertainty,
        ``disarm()`` stops that, ``value(atoms)`` returns it for the current frame (eV),
        computing it if the last calculation did not.
    every
        Evaluate at every global MD step divisible by ``every``.
    threshold
        End the segment when the value exceeds it (eV); None only records.
    min_steps
        Never end a segment before this many steps.
    check
        ``"most_uncertain"``: also return the evaluated frame with the largest value
        (:attr:`SegmentResult.check_frame`) for the DFT check; ``"end"``: the last frame is checked.
    """

    probe: object
    every: int = 1
    threshold: float | None = None
    min_steps: int = 1
    check: str = "end"


@dataclass
class SegmentResult:
    """End state of a segment, the model's labels of the last frame and the trajectory."""

    state: MDState
    energy: float
    forces: np.ndarray
    virial: np.ndarray | None
    trajectory_xyz: bytes = b""
    stopped_early: str | None = None
    n_frames: int = 0
    extra: dict = field(default_factory=dict)
    uncertainty: float | None = None
    uncertainty_stop: str | None = None
    n_uncertainty_evals: int = 0
    uncertainty_seconds: float = 0.0
    check_frame: dict | None = None
    """With ``UncertaintyMonitor.check == "most_uncertain"`` and that frame not the last: ``step``,
    ``numbers``, ``positions``, ``cell``, ``pbc``, the model's ``energy``, ``forces``, ``virial``
    (None if not periodic) and ``uncertainty`` of the most uncertain evaluated frame."""


def run_segment(
    state: MDState,
    calculator,
    md,
    n_steps: int,
    trajectory_interval: int = 0,
    guard: Callable[[Atoms, int], str | None] | None = None,
    progress: Callable[[int], None] | None = None,
    uncertainty: UncertaintyMonitor | None = None,
) -> SegmentResult:
    """Run ``n_steps`` MD steps from ``state`` with ``calculator``.

    Parameters
    ----------
    state
        Where to start; not modified.
    calculator
        An ASE calculator (the ML model, or a reference wrapper).
    md
        The campaign's ``md`` settings.
    n_steps
        Steps to take.
    trajectory_interval
        Keep a frame (extxyz) every this many global steps; 0 keeps none.
    guard
        Called after every step with (atoms, step); a returned string stops the segment
        early with that reason.
    progress
        Called every step with the global step number.
    uncertainty
        Evaluate the model's uncertainty every ``uncertainty.every`` steps and at the last
        frame; above ``uncertainty.threshold`` the segment ends at that frame.

    Each step makes one model call, for energy and forces only; the last step's call also
    computes the virial (periodic cells; every step's under NPT, whose barostat reads it) and,
    with ``uncertainty``, the variance, so the last frame costs no second call unless the
    segment ends early.
    """
    import time

    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = state.to_atoms()
    atoms.calc = calculator
    dyn, rng = make_dynamics(atoms, md, state.rng_state)
    from ase.io import write  # scipy (through ase.constraints): only when a segment runs, not on `otf --help`

    buffer = io.StringIO()
    n_frames = 0
    step = state.step
    stopped = None

    def keep_frame():
        nonlocal n_frames
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frame.info["md_step"] = step
        write(buffer, frame, format="extxyz")
        n_frames += 1

    monitor = uncertainty
    u_value, u_stop, u_evals, u_seconds = None, None, 0, 0.0
    probe_now = False

    most = None  # (value, step, Atoms) of the most uncertain evaluated frame (check: most_uncertain)

    def measure() -> float:
        nonlocal u_evals, u_seconds, most
        t0 = time.perf_counter()
        value = float(monitor.probe.value(atoms))
        u_seconds += time.perf_counter() - t0
        u_evals += 1
        if monitor.check == "most_uncertain" and (most is None or value >= most[0]):
            frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            most = (value, step, frame)
        return value

    periodic = bool(atoms.pbc.all())
    stress_every_step = periodic and md.ensemble == "npt_berendsen"  # its barostat reads the stress each step
    for i in range(n_steps):
        last = i == n_steps - 1
        probe_now = monitor is not None and ((step + 1) % monitor.every == 0 or last)
        if probe_now:
            monitor.probe.arm()  # the step's own force call at the new positions also gives the variance
        # not dyn.step(forces): NPTBerendsen rescales the cell first, and forces of the unscaled
        # frame would break the exact continuation of a trajectory split into segments
        with also_computing(calculator, ("stress",) if stress_every_step or (last and periodic) else ()):
            dyn.step()
        step += 1
        if probe_now:
            monitor.probe.disarm()
            u_value = measure()
        if trajectory_interval and step % trajectory_interval == 0:
            keep_frame()
        if progress is not None:
            progress(step)
        if guard is not None:
            reason = guard(atoms, step)
            if reason:
                stopped = reason
                logger.warning("segment stopped at step %d: %s", step, reason)
                break
        if (probe_now and monitor.threshold is not None and u_value > monitor.threshold
                and i + 1 >= monitor.min_steps and i + 1 < n_steps):
            u_stop = f"uncertainty {u_value:.4g} eV > {monitor.threshold:.4g} eV at step {step}"
            logger.info("segment ended early: %s", u_stop)
            break
    if monitor is not None and not (probe_now and u_value is not None):
        u_value = measure()  # the checked frame's uncertainty, for the record and calibration
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(), dtype=float)
    virial = None
    if periodic:
        try:
            virial = virial_from_stress(atoms.get_stress(voigt=False), atoms.get_volume())
        except NotImplementedError:
            virial = None
    end = MDState.from_atoms(atoms, step, _rng_state(rng))
    check_frame = None
    if most is not None and most[1] != step and stopped is None:
        check_frame = _labelled_by_model(most[2], calculator, most[1], periodic)
        check_frame["uncertainty"] = most[0]
    return SegmentResult(end, energy, forces, virial, buffer.getvalue().encode(), stopped, n_frames,
                         uncertainty=u_value, uncertainty_stop=u_stop, n_uncertainty_evals=u_evals,
                         uncertainty_seconds=u_seconds, check_frame=check_frame)


def _labelled_by_model(frame: Atoms, calculator, step: int, periodic: bool) -> dict:
    """``frame`` (no velocities) with the model's energy, forces and virial: one model call."""
    frame = frame.copy()
    frame.calc = calculator
    properties = ["energy", "forces"] + (["stress"] if periodic and "stress" in getattr(
        calculator, "implemented_properties", ()) else [])
    calculator.calculate(frame, properties)
    virial = None
    if "stress" in properties:
        virial = virial_from_stress(frame.get_stress(voigt=False), frame.get_volume()).tolist()
    return {"step": int(step), "numbers": frame.numbers.tolist(), "positions": frame.positions.tolist(),
            "cell": np.array(frame.cell).tolist(), "pbc": frame.pbc.tolist(),
            "energy": float(frame.get_potential_energy()), "forces": frame.get_forces().tolist(), "virial": virial}
