"""The documentation stays true: the site builds with warnings as errors, the getting-started page runs as
written, every campaign YAML key and every ``otf`` option has a description, and the documented ``--json``
keys are the ones a real run prints."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

#: Pages whose code blocks a test runs, one after the other, in one empty directory: the 5-minute EMT
#: campaign, then the store tutorial's Python on the store it made.
RUNNABLE_PAGES = ["getting-started/quickstart.md", "tutorials/store.md"]

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)(?P<attrs>[^\n]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_SKIP = "<!-- test: skip -->"


def _hooks():
    """scripts/docs_hooks.py, the MkDocs hook that generates the reference pages."""
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(page: Path) -> list[tuple[str, str, str]]:
    """(language, attributes, body) of every fenced block of a page not marked ``<!-- test: skip -->``."""
    text = page.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        if before.endswith(_SKIP):
            continue
        blocks.append((match["lang"], match["attrs"].strip(), match["body"]))
    return blocks


def page_script(page: Path, workdir: Path) -> str:
    """One bash script of a page's blocks: ``yaml title="F"`` blocks are written to F, ``bash`` blocks run,
    ``python`` blocks run with the current interpreter; other languages (``text``: output) are shown only."""
    lines = ["set -euo pipefail"]
    for number, (lang, attrs, body) in enumerate(code_blocks(page)):
        title = re.search(r'title="([^"]+)"', attrs)
        if title:
            (workdir / title.group(1)).write_text(body)
        elif lang == "bash":
            lines.append(body)
        elif lang == "python":
            script = workdir / f"{page.stem}_{number}.py"
            script.write_text(body)
            lines.append(f"python {script.name}")
    return "\n".join(lines) + "\n"


def _shims(bin_dir: Path) -> None:
    """``otf`` and ``python`` on PATH as this interpreter, so the blocks run the code under test."""
    bin_dir.mkdir()
    for name, command in (("otf", f'"{sys.executable}" -m otf_flows "$@"'), ("python", f'"{sys.executable}" "$@"')):
        shim = bin_dir / name
        shim.write_text(f"#!/usr/bin/env bash\nexec {command}\n")
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)


def test_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a missing page or a bad docstring fails."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    yaml_page = (site / "reference" / "yaml" / "index.html").read_text()
    hooks = _hooks()
    for key, _ in hooks.config_keys():
        assert f"<code>{key.rsplit('.', 1)[-1]}</code>" in yaml_page, key
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for name, command in hooks.cli_commands()[1:]:
        assert f"<code>{name}</code>" in cli_page, name
        for param in hooks.cli_params(command):
            if param.param_type_name == "option":
                assert f"<code>{param.opts[0]}</code>" in cli_page, (name, param.opts)
    assert (site / "explanation" / "figures" / "hidden_error_cuau-most-uncertain.png").is_file()
    assert "OtfMDMaker" in (site / "reference" / "api" / "index.html").read_text()


def test_every_yaml_key_and_cli_option_is_described():
    hooks = _hooks()
    keys = dict(hooks.config_keys())
    # the walk reaches nested blocks and every member of a union
    for key in ("md.guard.max_label_force_eV_A", "reference (engine: cp2k).kpoints", "model (backend: mace).r_max_A",
                "execution.dft.omp_threads", "adaptive_method_parameters.grow_below", "tolerances.frmse"):
        assert key in keys, key
    assert hooks.missing_descriptions() == []


def test_a_missing_description_is_found():
    """The check itself can fail: a key without a description is reported with its dotted path."""
    hooks = _hooks()

    class Inner(BaseModel):
        described: int = Field(1, description="Has one.")
        bare: int = 2

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner, description="A block.")

    assert [k for k, f in hooks.config_keys(Outer) if not f.description] == ["inner.bare"]


@pytest.mark.timeout(900)
def test_getting_started_runs_as_written(tmp_path):
    """Every code block of the pages, in order, in an empty directory, as a reader would type them."""
    work = tmp_path / "work"
    work.mkdir()
    _shims(tmp_path / "bin")
    script = "".join(page_script(DOCS / page, work) for page in RUNNABLE_PAGES)
    assert "otf run cu-quick.yaml" in script and "models_with_scores" in "".join(
        p.read_text() for p in work.glob("*.py"))
    env = {k: v for k, v in os.environ.items() if k != "OTF_STORE"}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, env=env,
                          timeout=840, check=False)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert (work / "report" / "index.html").is_file()
    assert (work / "my-gap" / "gap.xml").is_file()
    assert (work / "traj.xyz").stat().st_size > 0

    # the documented --json keys are those a real run prints (reference/json.md is generated from the code
    # that builds the rows; this compares it with the output)
    hooks = _hooks()
    documented = {command: keys for command, _, keys, _ in hooks.json_outputs()}

    def json_of(*args):
        out = subprocess.run(["otf", *args, "--json"], cwd=work, capture_output=True, text=True, env=env,
                             timeout=300, check=True)
        return json.loads(out.stdout)

    assert list(json_of("checks", "cu-quick")[0]) == documented["otf checks CAMPAIGN --json"]
    assert list(json_of("models")[0]) == documented["otf models --json, otf lineage MODEL_ID --json"]
    assert list(json_of("data", "frames", "cu-quick")[0]) == documented["otf data frames CAMPAIGN --json"]
    status = json_of("status", "cu-quick")
    assert dotted_keys(status) == documented["otf status [CAMPAIGN] --json"]
    assert "last_checks.frmse_median" in dotted_keys(status)  # nested objects are documented key by key


def dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """The keys of a JSON object, those of nested objects dotted (``last_checks.n``)."""
    out = []
    for key, value in data.items():
        out += dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


_HASH = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")


def test_readme_is_a_front_door_without_run_histories():
    """The README opens with the two set-up commands, fits in about two screens, and neither it nor a
    documentation page carries a commit hash."""
    readme = (REPO / "README.md").read_text()
    first_block = code_blocks(REPO / "README.md")[0][2]
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == [
        "bash scripts/main.sh", "bash scripts/test.sh"]
    assert len(readme.splitlines()) <= 100
    for page in [REPO / "README.md", *DOCS.rglob("*.md")]:
        found = _HASH.findall(page.read_text())
        assert not found, f"{page.relative_to(REPO)}: {found}"
