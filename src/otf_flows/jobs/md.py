"""The ML-MD segment job: ``n_steps`` of ASE MD with the current model."""

from __future__ import annotations

from dataclasses import dataclass

from jobflow import Maker, job

from otf_flows import progress
from otf_flows.backends.gap import gap_calculator
from otf_flows.jobs.base import model_dir, open_campaign, timed
from otf_flows.jobs.reference import state_doc, state_from_doc
from otf_flows.md.segment import run_segment


@dataclass
class MDSegmentMaker(Maker):
    """Continue the trajectory from a stored state for ``n_steps`` with a model.

    The end state (positions, velocities, cell, RNG state, step) and the model's energy,
    forces and virial of the last frame are stored; the trajectory goes to the blob store.
    """

    name: str = "ml-md segment"

    @job
    def make(self, campaign: str, store: str, state_id: str, model_id: str, n_steps: int):
        st, config = open_campaign(campaign, store)
        start = st.get_state(state_id)
        end_id = f"{campaign}:state:{start.step + n_steps}"
        done = st.find_state(end_id)
        if done is not None and done.model_id == model_id:
            return {"state_id": end_id, "step": done.step, "stopped_early": done.stopped_early}
        with timed(st, campaign, "ml_md", self.name, f"{campaign}:md:{start.step}:{n_steps}", start.step):
            calc = gap_calculator(model_dir(st, model_id) / "gap.xml")
            result = run_segment(
                state_from_doc(start), calc, config.md, n_steps, config.md.trajectory_interval,
                progress=lambda s: progress.emit("md_step", step=s),
            )
        traj = st.put_blob(result.trajectory_xyz) if result.n_frames else None
        virial = None if result.virial is None else result.virial.tolist()
        doc = state_doc(
            campaign, result.state, model_id=model_id, ml_energy=result.energy, ml_forces=result.forces.tolist(),
            ml_virial=virial, trajectory=traj, stopped_early=result.stopped_early,
        )
        st.put_state(doc)
        return {"state_id": doc.state_id, "step": doc.step, "stopped_early": result.stopped_early}
