"""Physical benchmarks of a stored model against the campaign's DFT reference, as atomate2 flows.

Seed 001, Sec. V: energy-volume curves, phonons and elastic constants show what error metrics hide.
For one property and one structure this module builds a jobflow ``Flow`` of three parts:

- the model's side: atomate2's ``forcefields`` flows (``ForceFieldEosMaker``, ``PhononMaker``,
  ``ElasticMaker``) whose force-field jobs use the stored model as their ASE calculator
  (:func:`~otf_flows.validation.physical.stored_model_calculator`, given to atomate2 as a custom force
  field: any backend, GAP or MACE);
- the DFT side: the same atomate2 flows with :class:`~otf_flows.jobs.physical.ReferenceStaticMaker`
  as their static maker, i.e. one campaign-reference single point (CP2K through atomate2 and custodian)
  per strained cell, phonopy displacement or elastic deformation, each a ``dft``-routed job of the graph;
- :class:`~otf_flows.jobs.physical.RecordPhysicalMaker`, which compares the two and stores the result.

Both sides run on the same structures: the EOS at the same strained cells without relaxation (an
isotropic strain moves no atom of a crystal whose atoms sit at fixed Wyckoff positions, e.g. diamond),
the phonons with the same supercell and displacement, the elastic tensor clamped-ion (deformed
cells without internal relaxation) on both sides.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jobflow import Flow, Job

from otf_flows.campaign import CampaignConfig, ExecutionSettings, PhysicalBenchmark
from otf_flows.jobs.physical import RecordPhysicalMaker, ReferenceStaticMaker
from otf_flows.jobs.routing import route
from otf_flows.structures import build_structure
from otf_flows.validation.physical import force_field, load_structure
from otf_flows.validation.physical_analysis import adapted_kpoints

logger = logging.getLogger(__name__)

__all__ = ["final_benchmarks", "physical_flow"]


def final_benchmarks(store, config: CampaignConfig, campaign: str, store_location: str, model_id: str) -> Flow | None:
    """The flows of the campaign's ``validation.physical`` benchmarks of its final model (None before the
    campaign's last step, without benchmarks, or when every one is stored for ``model_id`` already)."""
    if not config.validation.physical or store.require_campaign(campaign).step < config.md.total_steps:
        return None
    reference_cell = build_structure(config.structure).cell[:]
    flows = []
    for bench in config.validation.physical:
        label = bench.label or Path(bench.structure).stem
        if store.validations(model_id, f"physical:{bench.property}:{label}"):
            continue
        bench = bench.model_copy(update={"label": label})
        flows.append(physical_flow(bench, load_structure(bench.structure), store_location, model_id, config,
                                   reference_cell))
    return Flow(flows, name=f"physical benchmarks of {model_id}") if flows else None


def _route(flow, kind: str, execution, pass_on: bool = False) -> None:
    """Route every job of ``flow`` as ``kind``; with ``pass_on`` the jobs they add at run time inherit it."""
    for item in ([flow] if isinstance(flow, Job) else flow.jobs):
        if isinstance(item, Job):
            route(item, kind, execution)
            item.config.pass_manager_config = pass_on
        else:
            _route(item, kind, execution, pass_on)


def _makers(prop: str, bench: PhysicalBenchmark, static):
    """The atomate2 maker of ``prop`` whose single points are ``static`` (a force-field or DFT static maker)."""
    if prop == "eos":
        from atomate2.forcefields.flows.eos import ForceFieldEosMaker

        return ForceFieldEosMaker(initial_relax_maker=None, eos_relax_maker=static, static_maker=None,
                                  linear_strain=tuple(bench.linear_strain), number_of_frames=bench.n_points)
    if prop == "phonons":
        from atomate2.forcefields.flows.phonons import PhononMaker

        return PhononMaker(bulk_relax_maker=None, static_energy_maker=None, phonon_displacement_maker=static,
                           displacement=bench.displacement_A, use_symmetrized_structure=None,
                           kpath_scheme="seekpath", store_force_constants=False, min_length=None)
    from atomate2.forcefields.flows.elastic import ElasticMaker

    return ElasticMaker(bulk_relax_maker=None, elastic_relax_maker=static)


def physical_flow(bench: PhysicalBenchmark, structure, store: str, model_id: str, config=None,
                  reference_cell=None) -> Flow:
    """The flow of one benchmark: the model's atomate2 flow, the DFT one (unless ``bench.dft`` is false or
    there is no campaign ``config``), and the job that compares and stores them.

    ``reference_cell`` is the campaign's starting cell, whose ``reference.kpoints`` set the k-point density
    of the DFT single points unless ``bench.kpoints`` is given.
    """
    from atomate2.forcefields.jobs import ForceFieldStaticMaker

    prop = bench.property
    label = bench.label or Path(bench.structure).stem
    cache = config.execution.cache_dir if config is not None else None
    model_static = ForceFieldStaticMaker(name="model single point", **force_field(store, model_id, cache))
    supercell = [[bench.supercell[0], 0, 0], [0, bench.supercell[1], 0], [0, 0, bench.supercell[2]]]
    notes = []
    make_kwargs = {"supercell_matrix": supercell} if prop == "phonons" else {}
    if prop == "phonons":
        notes.append(f"supercell {bench.supercell[0]}x{bench.supercell[1]}x{bench.supercell[2]} of the given cell "
                     f"({len(structure) * bench.supercell[0] * bench.supercell[1] * bench.supercell[2]} atoms), "
                     f"displacement {bench.displacement_A} Å, phonopy through atomate2, same on both sides")
    if prop == "eos":
        low, high = bench.linear_strain
        notes.append(f"{bench.n_points} cells at linear strains {low:+.3f}..{high:+.3f} of the given cell"
                     ", atoms not relaxed, same cells on both sides; Birch-Murnaghan fit")
    if prop == "elastic":
        notes.append("clamped-ion elastic tensor (deformed cells, atoms not relaxed) on both sides")
    model_flow = _makers(prop, bench, model_static).make(structure, **make_kwargs)
    model_flow.name = f"model {prop} of {label}"
    jobs = [model_flow]
    dft_output = None
    kpoints = None
    if bench.dft and config is not None:
        if hasattr(config.reference, "kpoints"):
            if bench.kpoints is not None:
                kpoints = tuple(bench.kpoints)
                notes.append(f"DFT k-points {kpoints} as given")
            elif reference_cell is None:
                kpoints = tuple(config.reference.kpoints)
                notes.append(f"DFT k-points {list(kpoints)}: the reference's, unchanged (no campaign cell known)")
            else:
                cell = structure.lattice.matrix
                if prop == "phonons":
                    cell = [[v * n for v in row] for row, n in zip(cell, bench.supercell)]
                kpoints = adapted_kpoints(config.reference.kpoints, reference_cell, cell)
                notes.append(f"DFT k-points {list(kpoints)}: the density of the reference's "
                             f"{list(config.reference.kpoints)} on the campaign's cell, carried over to the "
                             f"{'supercell' if prop == 'phonons' else 'benchmark cell'}")
        dft_static = ReferenceStaticMaker(name="dft single point", config=config, kpoints=kpoints)
        dft_flow = _makers(prop, bench, dft_static).make(structure, **make_kwargs)
        dft_flow.name = f"dft {prop} of {label}"
        jobs.append(dft_flow)
        dft_output = dft_flow.output
    settings = {**bench.model_dump(mode="json"), "label": label, "kpoints_used": list(kpoints) if kpoints else None,
                "supercell_matrix": supercell if prop == "phonons" else None, "notes": notes,
                "reference": config.reference.model_dump(mode="json") if config is not None else None}
    record = RecordPhysicalMaker().make(store, model_id, prop, label, structure, model_flow.output, dft_output,
                                        settings)
    record.name = f"record {prop} of {label}"
    jobs.append(record)
    flow = Flow(jobs, output=record.output, name=f"physical {prop} of {label} ({model_id})")
    execution = config.execution if config is not None else ExecutionSettings()
    # the model's side on md workers, the DFT side on dft workers: every job of a side, and (passed on)
    # the single points that atomate2's phonon and elastic jobs add while they run
    _route(model_flow, "md", execution, pass_on=True)
    if dft_output is not None:
        _route(jobs[1], "dft", execution, pass_on=True)
    _route(record, "light", execution)
    return flow
