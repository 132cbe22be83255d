"""GAP as one entry of the ML-backend protocol (:mod:`otf_flows.ml.base`).

Each fit runs ``gap_fit`` from scratch on all training data (the parent is not used), with up to
two retries: a larger ``sparse_jitter``, then also fewer sparse points. Export writes a LAMMPS
``pair_style quip`` snippet and an ASE example next to the XML and sparseX files.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from otf_flows.errors import FitFailedError, InputError
from otf_flows.ml.base import FitResult, pack_dir, unpack_dir
from otf_flows.ml.gap import fit as gap

logger = logging.getLogger(__name__)

__all__ = ["GapBackend", "fit_with_retries", "gap_label", "gap_species"]


class GapBackend:
    """GAP via quippy-ase: ``gap_fit`` for fits, quippy's ``Potential`` as the calculator."""

    name = "gap"
    model_file = "gap.xml"

    def check_available(self) -> None:
        gap.check_gap_fit()

    def fit(self, frames, workdir: Path, model, refit, *, parent_dir: Path | None = None,
            num_threads: int | None = None, seed: int | None = 1) -> FitResult:
        """gap_fit from scratch (``parent_dir`` is not used), retried as :func:`fit_with_retries`."""
        numbers = sorted({int(z) for a in frames for z in a.numbers})
        descriptor = gap.descriptor_for(model.preset, refit.descriptor_str, numbers)
        result, refit_used, descriptor = fit_with_retries(frames, Path(workdir), refit, descriptor, num_threads, seed)
        result.settings = {"descriptor_str": descriptor,
                           **refit_used.model_dump(mode="json", exclude={"previous_data"})}
        return result

    def calculator(self, model_dir: Path, cached: bool = False):
        return gap.gap_calculator(Path(model_dir) / self.model_file, cached=cached)

    def uncertainty(self, calc, settings):
        """:class:`~otf_flows.ml.gap.fit.GapUncertainty` of the Potential ``calc``."""
        return gap.GapUncertainty(calc, settings.measure)

    def threads(self, num_threads: int | None):
        return gap.quip_threads(num_threads)

    def species(self, model_dir: Path) -> list[int]:
        return gap_species(Path(model_dir) / self.model_file)

    def pack(self, model_dir: Path) -> bytes:
        return pack_dir(model_dir)

    def unpack(self, data: bytes, dest: Path) -> Path:
        return unpack_dir(data, dest)

    def export(self, model_dir: Path, dest: Path, model_id: str, numbers: list[int], data_lines: str = "") -> None:
        from ase.data import chemical_symbols

        dest = Path(dest)
        symbols = [chemical_symbols[z] for z in numbers]
        label = gap_label(Path(model_dir) / self.model_file)
        (dest / "lammps.in").write_text(
            f"# LAMMPS snippet for GAP model {model_id} (needs LAMMPS built with the ML-QUIP package)\n"
            f"# atom types must be numbered in the order of the atomic numbers below ({' '.join(symbols)})\n"
            f"{data_lines}"
            "pair_style quip\n"
            f'pair_coeff * * gap.xml "Potential xml_label={label}" {" ".join(map(str, numbers))}\n'
        )
        (dest / "ase_example.py").write_text(
            f'"""Run MD with GAP model {model_id} in ASE (pip install quippy-ase)."""\n'
            "from pathlib import Path\n\n"
            "from ase.io import read\n"
            "from ase.md.langevin import Langevin\n"
            "from ase import units\n"
            "from quippy.potential import Potential\n\n"
            'calc = Potential(param_filename=str(Path(__file__).with_name("gap.xml")))\n'
            'atoms = read("start.xyz")  # your structure\n'
            "atoms.calc = calc\n"
            "dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=300, friction=0.01 / units.fs)\n"
            "dyn.run(1000)\n"
            'print("potential energy (eV):", atoms.get_potential_energy())\n'
        )


def gap_label(xml: Path) -> str:
    """The XML label of a GAP (``Potential xml_label=...`` in QUIP/LAMMPS)."""
    root = ET.parse(xml).getroot()
    if root.tag.startswith("GAP_"):
        return root.tag
    for child in root.iter():
        if child.tag == "GAP_params" and "label" in child.attrib:
            return child.attrib["label"]
    raise InputError(f"{xml}: no GAP label found")


def gap_species(xml: Path) -> list[int]:
    """Atomic numbers a GAP is fitted for, read from its descriptors (``Z=``, ``Z1=``, ``species_Z={..}``
    as gap_fit writes them), sorted; 0 (gap_fit's "any element") is left out."""
    numbers: set[int] = set()
    for node in ET.parse(xml).getroot().iter("descriptor"):
        for _, value in re.findall(r"(?<![\w])(Z\d?|species_Z)\s*=\s*(\{[^}]*\}|\d+)", node.text or ""):
            numbers.update(int(z) for z in value.strip("{}").split())
    numbers.discard(0)
    if not numbers:
        raise InputError(f"{xml}: no species found in the GAP descriptors")
    return sorted(numbers)


def _fewer_sparse(descriptor: str) -> str:
    """The descriptor string with every n_sparse halved (at least 1)."""
    return re.sub(r"n_sparse\s*=\s*(\d+)", lambda m: f"n_sparse={max(1, int(m.group(1)) // 2)}", descriptor)


def fit_with_retries(frames, workdir: Path, refit, descriptor: str, num_threads: int | None, seed: int | None = 1):
    """gap_fit, then on failure a larger ``sparse_jitter``, then also fewer sparse points.

    Returns the result with the refit settings and descriptor that worked; raises the last
    :class:`FitFailedError` if all three attempts fail.
    """
    jitter = _jitter(refit.extra_gap_opts)
    larger = max(jitter * 100.0, 1.0e-6)
    bigger_jitter = refit.model_copy(
        update={"extra_gap_opts": gap.with_option(refit.extra_gap_opts, "sparse_jitter", larger)})
    attempts = [(refit, descriptor), (bigger_jitter, descriptor), (bigger_jitter, _fewer_sparse(descriptor))]
    error = None
    for i, (settings, desc) in enumerate(attempts):
        try:
            return gap.fit_gap(frames, workdir / f"attempt_{i}", settings, desc, num_threads, seed), settings, desc
        except FitFailedError as err:
            logger.warning("gap_fit attempt %d failed: %s", i + 1, err)
            error = err
    raise error


def _jitter(extra_gap_opts: str) -> float:
    for opt in gap.split_opts(extra_gap_opts):
        key, _, value = opt.partition("=")
        if key.strip() == "sparse_jitter":
            try:
                return float(value)
            except ValueError:
                break
    return 1.0e-8
