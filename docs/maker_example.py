"""OtfMDMaker in an atomate2-style script: build the campaign's Flow, run it with jobflow's run_locally
on the project's JobStore, then read the checks and models from the store.

    python docs/maker_example.py [STORE_DIR]      # about 30 s on 2 cores (EMT reference, no DFT)

The same Maker can follow an atomate2 relaxation (``--relax``): the relax job's output structure is
the campaign's start, ``Flow([relax, otf.make(relax.output.structure)])``.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from ase.build import bulk
from jobflow import Flow, run_locally

from otf_flows import OtfMDMaker
from otf_flows.campaign import Tolerances
from otf_flows.store import OtfStore

REPO = Path(__file__).resolve().parents[1]


def main(store_dir: Path, relax: bool = False) -> None:
    # 1. the Maker: every setting of configs/cu-emt.yaml, with a shorter run and other tolerances
    otf = OtfMDMaker.from_yaml(REPO / "configs" / "cu-emt.yaml", store=str(store_dir))
    otf = dataclasses.replace(otf, md={**otf.md.model_dump(exclude_unset=True), "total_steps": 60},
                              tolerances=Tolerances(ediff=0.002, fmax=0.3))  # mappings are validated as blocks
    # ... or written in Python, with an ASE calculator (or an atomate2 CP2K/VASP StaticMaker) as reference:
    #   from ase.calculators.emt import EMT
    #   otf = OtfMDMaker(name="cu-emt", reference_maker=EMT, num_initial_steps=5, check_interval=10,
    #                    can_update=True, md={"temperature_K": 1200, "timestep_fs": 2.0, "total_steps": 60},
    #                    tolerances={"ediff": 0.002, "fmax": 0.3}, store=str(store_dir))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))

    # 2. the Flow: it can be inspected (and serialised) before anything runs
    if relax:
        from atomate2.ase.jobs import EmtRelaxMaker
        from pymatgen.io.ase import AseAtomsAdaptor

        relax_job = EmtRelaxMaker(relax_cell=True).make(AseAtomsAdaptor.get_structure(atoms))
        flow = Flow([relax_job, otf.make(relax_job.output.structure)])
    else:
        flow = otf.make(atoms)
        md_job = next(job for job, _ in flow.iterflow() if job.name.startswith("ml-md"))
        print(f"{md_job.name}: timestep {md_job.maker.config.md.timestep_fs} fs, "
              f"tolerances {md_job.maker.config.tolerances.model_dump(exclude_none=True)}")

    # 3. run it with jobflow's run_locally on the project's JobStore
    store = OtfStore(str(store_dir))
    run_locally(flow, store=store.jobstore, create_folders=True, root_dir=store_dir / "runs", ensure_success=True,
                log=False)

    # 4. query the store
    for check in sorted(store.checks(otf.name), key=lambda c: c.step):
        verdict = "passed" if check.passed else "FAILED"
        print(f"check at step {check.step:3d}: {verdict}  fmax {check.fmax:.3f} eV/Å  ediff {check.ediff:.4f} eV/atom "
              f"-> next interval {check.new_interval}{'  (refit)' if check.refit else ''}")
    for model in store.models(otf.name):
        print(f"model {model.model_id}: {model.n_training_frames} training frames, fitted in {model.fit_seconds:.1f} s")
    print(f"campaign {otf.name}: {store.require_campaign(otf.name).status}; the same data: "
          f"otf checks {otf.name} --store {store_dir}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--relax"]
    directory = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="otf-maker-")) / "store"
    main(directory.resolve(), relax="--relax" in sys.argv[1:])
