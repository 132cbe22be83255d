"""MkDocs hook: the reference pages generated from the code at build time, so they cannot drift.

``mkdocs.yml`` names this file under ``hooks:``. On every build it writes four pages from the
top-level objects of the package (so keys, commands and options added later appear by themselves):

- ``reference/yaml.md``: every campaign YAML key, recursively from
  :class:`otf_flows.campaign.CampaignConfig`'s pydantic fields (type, default, units, description);
- ``reference/cli.md``: every ``otf`` command, argument and option, from the Typer app's click
  command tree (``typer.main.get_command``);
- ``reference/documents.md``: the stored documents (:mod:`otf_flows.schemas.documents`);
- ``reference/json.md``: the keys of ``--json`` output, read from the functions that build the rows.

It also serves the benchmark figures (``benchmarks/results/*.png``) as ``explanation/figures/``.
``tests/test_docs.py`` imports it to check that every key and option has a description.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import json
import pkgutil
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import typer
from mkdocs.structure.files import File
from pydantic import BaseModel

import otf_flows
import otf_flows.cli as otf_cli
import otf_flows.commands as otf_commands
from otf_flows.campaign import CampaignConfig
from otf_flows.schemas import documents
from otf_flows.schemas.walkers import WalkerDoc

REPO = Path(__file__).resolve().parents[1]

#: Units read off a key's name (house style: units live in names), longest suffix first.
_UNIT_SUFFIXES = (
    ("_eV_per_atom", "eV/atom"), ("_per_GPa", "1/GPa"), ("_per_fs", "1/fs"), ("_eV_A", "eV/Å"),
    ("_GPa", "GPa"), ("_fs", "fs"), ("_K", "K"), ("_A", "Å"), ("_eV", "eV"), ("_Ry", "Ry"),
    ("_seconds", "s"),
)
#: hybrid-md's names carry no unit suffix; their units are fixed by DESIGN §2.
_UNIT_NAMES = {"ediff": "eV/atom", "fmax": "eV/Å", "frmse": "eV/Å", "vmax": "eV/atom"}


def unit_of(name: str) -> str:
    """The unit a key's name carries, or '' (dimensionless, or a unit only its description states)."""
    if name in _UNIT_NAMES:
        return _UNIT_NAMES[name]
    for suffix, unit in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return unit
    return ""


def _escape_html(text: str) -> str:
    """``<campaign>-v<version>`` is text, not HTML tags: escape < and > outside code spans."""
    parts = text.split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
    return "`".join(parts)


def _cell(text: Any) -> str:
    """One Markdown table cell: no newlines, pipes escaped, no stray HTML."""
    return _escape_html(" ".join(str(text).split())).replace("|", "\\|")


def _rst_to_md(text: str) -> str:
    """Docstrings use reST literals (``x``); Markdown wants `x`. Pointers into the developers' design
    notes (DESIGN §5) mean nothing to a reader of the site."""
    return _escape_html(re.sub(r" ?\(DESIGN §[\d.]+[^)]*\)", "", text).replace("``", "`"))


# --------------------------------------------------------------------------------------------
# YAML keys


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation holds (directly, in a union, list or mapping)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in _models_in(arg):
            if model not in found:
                found.append(model)
    return found


def _discriminator(model: type[BaseModel]) -> str:
    """``engine: cp2k``-style label of a union member, from its Literal-typed field with a default."""
    for name, field in model.model_fields.items():
        if typing.get_origin(field.annotation) is Literal and len(typing.get_args(field.annotation)) == 1:
            return f"{name}: {typing.get_args(field.annotation)[0]}"
    return next(iter(model.model_fields), model.__name__)


def walk_config(root: type[BaseModel] = CampaignConfig) -> list[tuple[type[BaseModel], list[str]]]:
    """Every model reachable from ``root`` with the YAML paths it sits at, in reading order.

    A model used at several places (``execution.dft``, ``execution.md``, ...) is listed once with all
    its paths; a union of models (``reference``) lists each member with the path qualified by its
    discriminator (``reference (engine: cp2k)``).
    """
    order: list[type[BaseModel]] = []
    paths: dict[type[BaseModel], list[str]] = {}

    def visit(model: type[BaseModel], path: str) -> None:
        if model in paths:
            if path not in paths[model]:
                paths[model].append(path)
            return
        order.append(model)
        paths[model] = [path]
        for name, field in model.model_fields.items():
            sub = _models_in(field.annotation)
            sub_path = f"{path}.{name}" if path else name
            for member in sub:
                visit(member, f"{sub_path} ({_discriminator(member)})" if len(sub) > 1 else sub_path)

    visit(root, "")
    return [(m, paths[m]) for m in order]


def config_keys(root: type[BaseModel] = CampaignConfig) -> list[tuple[str, Any]]:
    """(dotted YAML key, pydantic FieldInfo) for every key, recursively."""
    out = []
    for model, model_paths in walk_config(root):
        for path in model_paths:
            for name, field in model.model_fields.items():
                out.append((f"{path}.{name}" if path else name, field))
    return out


def _anchor(path: str) -> str:
    return "top" if not path else re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


#: Type names as a YAML user reads them.
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _anchor_id(anchor) -> str:
    """An anchor is its id, or (id, link label)."""
    return anchor if isinstance(anchor, str) else anchor[0]


def _type_str(annotation: Any, anchors: dict[type[BaseModel], str]) -> str:
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(f"`{json.dumps(a) if not isinstance(a, str) else a}`" for a in args)
    if origin is typing.Annotated:
        return _type_str(args[0], anchors)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_str(a, anchors) for a in args)
    if origin in (list, tuple, set):
        inner = [a for a in args if a is not Ellipsis]
        return "list of " + (_type_str(inner[0], anchors) if inner else "any")
    if origin is dict:
        return f"mapping {_type_str(args[0], anchors)} → {_type_str(args[1], anchors)}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in anchors:
            return "block"
        label = anchors[annotation] if isinstance(anchors[annotation], str) else anchors[annotation][1]
        return f"[{label}](#{_anchor_id(anchors[annotation])})"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_str(field) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(block defaults)"
    else:
        value = field.default
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)) and not value:
        return "`[]`" if isinstance(value, list) else "`{}`"
    return f"`{json.dumps(value, default=str) if not isinstance(value, str) else value}`"


def yaml_reference() -> str:
    """The page of every campaign YAML key."""
    walked = walk_config()
    anchors = {model: (_anchor(model_paths[0]), model_paths[0] or "top level") for model, model_paths in walked}
    lines = [
        "# Campaign YAML keys",
        "",
        "<!-- generated by scripts/docs_hooks.py from otf_flows.campaign.CampaignConfig: do not edit -->",
        "",
        "Every key of a campaign YAML file, generated from the pydantic schema that validates it (so this "
        "page always matches the installed code). Unknown keys and bad values are errors that name the "
        "key, the value and what is allowed. `otf schema` prints the same schema as JSON Schema. "
        "Units come from the key's name (`temperature_K`, `timestep_fs`) or, for hybrid-md's names, "
        "from the algorithm (`ediff` eV/atom, `fmax` eV/Å); see [the algorithm](../explanation/algorithm.md).",
        "",
        "Blocks: " + ", ".join(
            f"[`{(p[0] or 'top level')}`](#{_anchor_id(anchors[m])})" for m, p in walked),
        "",
    ]
    for model, model_paths in walked:
        title = ", ".join(f"`{p}`" for p in model_paths) if model_paths[0] else "Top level"
        lines += [f"## {title} {{#{_anchor_id(anchors[model])}}}", ""]
        doc = inspect.getdoc(model) or ""
        if doc:
            lines += [_rst_to_md(doc), ""]
        lines += ["| key | type | default | units | description |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            lines.append(
                f"| `{name}` | {_cell(_type_str(field.annotation, anchors))} | {_cell(_default_str(field))} "
                f"| {unit_of(name)} | {_cell(field.description or '')} |"
            )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line


def cli_command():
    """The ``otf`` command tree, as the console script builds it (typer's click-style objects)."""
    return typer.main.get_command(otf_cli.app)


def cli_commands(command=None, path: str = "otf") -> list[tuple[str, Any]]:
    """(full name, command) for ``otf`` and every (sub)command that is not hidden, depth first."""
    command = command or cli_command()
    out = [(path, command)]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        if not getattr(sub, "hidden", False):
            out += cli_commands(sub, f"{path} {name}")
    return out


def cli_params(command) -> list:
    """The documented parameters of a command (not hidden, not --help)."""
    return [p for p in command.params if not getattr(p, "hidden", False) and p.name != "help"]


def _is_argument(p) -> bool:
    return p.param_type_name == "argument"


def _param_name(p) -> str:
    if _is_argument(p):
        return f"`{p.name.upper()}`"
    return " / ".join(f"`{n}`" for n in [*p.opts, *p.secondary_opts])


def _param_type(p) -> str:
    descriptor = getattr(p, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is None:  # a plain click parameter
        return getattr(getattr(p, "type", None), "name", "") or ""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(f"`{m.value}`" for m in annotation)
    if typing.get_origin(annotation) is Literal:
        return " | ".join(f"`{a}`" for a in typing.get_args(annotation))
    kind = {bool: "flag", int: "integer", float: "number", str: "text", Path: "path"}.get(annotation)
    kind = kind or getattr(annotation, "__name__", str(annotation))
    return f"list of {kind}" if getattr(p, "multiple", False) or (getattr(p, "nargs", 1) or 1) < 0 else kind


def _param_default(p) -> str:
    if p.required:
        return "**required**"
    default = p.default
    if default is None or default == () or default is False or callable(default):
        return ""
    if isinstance(default, enum.Enum):
        default = default.value
    return f"`{default}`"


def _usage(name: str, command) -> str:
    params = cli_params(command)
    pieces = [name]
    if any(not _is_argument(p) for p in params):
        pieces.append("[OPTIONS]")
    for p in params:
        if _is_argument(p):
            pieces.append(p.name.upper() if p.required else f"[{p.name.upper()}]")
    if getattr(command, "commands", None):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _short_help(command) -> str:
    text = inspect.cleandoc(command.short_help or command.help or "")
    first = text.split("\n\n")[0]
    return " ".join(first.split())


def cli_reference() -> str:
    """The page of every ``otf`` command and option."""
    lines = [
        "# Command line: `otf`",
        "",
        "<!-- generated by scripts/docs_hooks.py from the Typer app (otf_flows.cli): do not edit -->",
        "",
        "Every command, argument and option of `otf`, generated from the command-line code; `otf COMMAND "
        "--help` prints the same. `STORE` is `--store` or the `OTF_STORE` environment variable: a directory "
        "(the embedded store, default `./otf-store`) or a `mongodb://` URI. Every listing command takes "
        "`--json` and then prints JSON on stdout and nothing else ([JSON output](json.md)). Any command "
        "takes `--debug` (tracebacks and debug logging).",
        "",
        "Exit codes: 0 success, 1 runtime failure, 2 bad input (one line on stderr, nothing written), "
        "3 `otf run` stopped resumably (SIGTERM, `--stop-after`), 130 Ctrl-C.",
        "",
    ]
    commands = cli_commands()
    lines += ["| command | what it does |", "|---|---|"]
    for name, cmd in commands[1:]:
        lines.append(f"| [`{name}`](#{_anchor(name)}) | {_cell(_rst_to_md(_short_help(cmd)))} |")
    lines.append("")
    for name, cmd in commands[1:]:
        lines += [f"## `{name}` {{#{_anchor(name)}}}", "", "```", _usage(name, cmd), "```", ""]
        if cmd.help:
            lines += [_rst_to_md(inspect.cleandoc(cmd.help)), ""]
        params = cli_params(cmd)
        if params:
            lines += ["| argument / option | type | default | description |", "|---|---|---|---|"]
            for p in params:
                lines.append(f"| {_param_name(p)} | {_cell(_param_type(p))} | {_cell(_param_default(p))} "
                             f"| {_cell(_rst_to_md(getattr(p, 'help', None) or ''))} |")
            lines.append("")
    return "\n".join(lines)


def missing_descriptions() -> list[str]:
    """Every YAML key without a description and every ``otf`` command, argument or option without help."""
    missing = [f"YAML key {key}" for key, field in config_keys() if not (field.description or "").strip()]
    for name, cmd in cli_commands()[1:]:
        if not (cmd.help or "").strip():
            missing.append(f"command `{name}`")
        for p in cli_params(cmd):
            if not (getattr(p, "help", None) or "").strip():
                missing.append(f"`{name}` {_param_name(p)}")
    return missing


# --------------------------------------------------------------------------------------------
# stored documents and --json


def document_models() -> list[type[BaseModel]]:
    """The stored documents' pydantic models, in the module's order."""
    return [obj for _, obj in inspect.getmembers(documents, inspect.isclass)
            if issubclass(obj, BaseModel) and obj.__module__ == documents.__name__ and not obj.__name__.startswith("_")]


#: Descriptions of document fields the schema leaves undescribed (plain names whose meaning is fixed).
_DOC_FIELDS = {
    "campaign": "Campaign name.",
    "name": "Campaign name.",
    "created_at": "When the document was stored (UTC).",
    "updated_at": "When the document was last changed (UTC).",
    "started_at": "When the allocation started (UTC).",
    "step": "MD step.",
    "numbers": "Atomic numbers.",
    "pbc": "Periodic boundary conditions.",
    "n_training_frames": "Frames the model was trained on.",
    "status": "Where the campaign stands.",
    "total_steps": "MD steps to run (md.total_steps).",
    "kind": "Job kind.",
    "seconds": "Wall time (s).",
    "scheduler": "The batch system.",
}


def documents_reference() -> str:
    """The page of the documents kept in the store."""
    models = sorted(document_models(), key=lambda m: inspect.getsourcelines(m)[1])
    anchors = {m: (m.__name__.lower(), m.__name__) for m in models}
    lines = [
        "# Stored documents",
        "",
        "<!-- generated by scripts/docs_hooks.py from otf_flows.schemas.documents: do not edit -->",
        "",
        _rst_to_md(inspect.getdoc(documents) or ""),
        "",
        "The embedded store keeps each collection in one SQLite file (`db/otf.sqlite3`); MongoDB keeps them "
        "as collections of the same names. Large payloads (model archives, trajectories, MD states) are "
        "blobs, referenced from these documents. Read them from Python with "
        "[`OtfStore`](api.md#otf_flows.store.OtfStore) ([tutorial](../tutorials/store.md)).",
        "",
    ]
    for model in models:
        lines += [f"## `{model.__name__}` {{#{_anchor_id(anchors[model])}}}", ""]
        doc = inspect.getdoc(model)
        if doc:
            lines += [_rst_to_md(doc), ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            description = field.description or _DOC_FIELDS.get(name, "")
            lines.append(f"| `{name}` | {_cell(_type_str(field.annotation, anchors))} | {_cell(_default_str(field))} "
                         f"| {_cell(description)} |")
        lines.append("")
    return "\n".join(lines)


def command_function(name: str):
    """A function of the command-line package by name (``check_row``), wherever in ``otf_flows.commands``."""
    if hasattr(otf_commands, name):
        return getattr(otf_commands, name)
    for info in pkgutil.iter_modules(otf_commands.__path__, otf_commands.__name__ + "."):
        module = importlib.import_module(info.name)
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"otf_flows.commands has no function {name}: update scripts/docs_hooks.py")


def dict_keys(func) -> list[str]:
    """The keys of the largest dict literal a function builds (its output row), nested ones dotted; a value
    built by another function of the command-line package that builds a dict (``check_time_errors(...)``)
    is expanded into that function's keys."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    dicts = [n for n in ast.walk(tree) if isinstance(n, ast.Dict)]
    if not dicts:
        raise ValueError(f"{func.__qualname__} builds no dict literal")
    biggest = max(dicts, key=lambda d: len(d.keys))

    def built_by(node) -> list[str] | None:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            return None
        try:
            return dict_keys(command_function(node.func.id))
        except (LookupError, ValueError, TypeError):  # not ours, or not a dict
            return None

    def keys(node: ast.Dict, prefix: str) -> list[str]:
        out = []
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and isinstance(k.value, str):
                inner = built_by(v)
                if isinstance(v, ast.Dict):
                    out += keys(v, f"{prefix}{k.value}.")
                elif inner is not None:
                    out += [f"{prefix}{k.value}.{key}" for key in inner]
                else:
                    out.append(f"{prefix}{k.value}")
        return out

    return keys(biggest, "")


#: Keys of --json output that are no document field of the same name.
_JSON_EXTRA = {
    "n_atoms": "Atoms in the frame.",
    "n_training_frames": "Frames the model was trained on.",
    "created_at": "When it was stored (ISO 8601, UTC).",
    "training": "The frame is in its campaign's training set.",
    "level_of_theory": "Short label of the reference's physics (from the provenance).",
    "n_corrections": "custodian corrections of the reference calculation.",
    "provenance": "The whole provenance (see `Provenance` in [stored documents](documents.md#provenance)).",
    "n_dft_labels": "Reference labels of the campaign (initial MD frames and checks, not imports).",
    "n_checks": "DFT checks so far.",
    "n_failed_checks": "Checks that failed.",
    "n_guard_trips": "Segments the blow-up guard stopped.",
    "n_refits": "Checks that triggered a refit.",
    "n_models": "Model versions of the campaign.",
    "model_n_training_frames": "Training frames of the current model (imports included).",
    "n_dft_labels_trained": "The campaign's own labels in the current model's training set.",
    "dft_calls_per_1000_steps": "What the accuracy costs: 1000 × `n_dft_labels` / `step`. Every reference "
    "label counts (initial MD, checks, guard checks, checks of rolled-back segments; not imports); `step` "
    "counts the reference-driven initial steps too, so ab initio MD would show 1000. null before the first step.",
    "last_checks.n": "How many recent checks the errors at check time below cover (at most 5).",
    "last_checks.n_passed": "Of them, passed.",
    "last_checks.frmse_median": "Median force RMSE at check time (eV/Å).",
    "last_checks.frmse_max": "Largest force RMSE at check time (eV/Å).",
    "last_checks.ediff_median": "Median energy error at check time (eV/atom).",
    "last_checks.ediff_max": "Largest energy error at check time (eV/atom).",
    "wall_seconds.reference": "Wall time in reference (DFT) calculations, over every run of the campaign (s).",
    "wall_seconds.fit": "Wall time in fits (s).",
    "wall_seconds.ml_md": "Wall time in ML-MD segments (s).",
    "wall_seconds.other": "Everything else: orchestration, store, validation (s).",
    "wall_seconds.campaign": "Wall time of the campaign over every run (s).",
    "wall_seconds.this_run": "Wall time of this `otf run` (s).",
    "store": "The store (directory, or MongoDB URI without credentials).",
    "reference_seconds": "Wall time in reference calculations (s).",
    "fit_seconds": "Wall time of the fit(s) (s).",
    "ml_md_seconds": "Wall time in ML-MD segments (s).",
    "allocations": "`otf status CAMPAIGN` only: the batch allocations of allocation mode (`otf submit --batch`).",
}


def _status_keys() -> list[str]:
    status = next(c for n, c in cli_commands() if n == "otf status")
    return dict_keys(status.callback)


def json_outputs() -> list[tuple[str, str, list[str], tuple]]:
    """(command, what it prints, keys, documents whose field descriptions apply) of each ``--json`` output."""
    d = documents
    return [
        ("otf checks CAMPAIGN --json", "a list, one object per DFT check",
         dict_keys(command_function("check_row")), (d.CheckDoc,)),
        ("otf models --json, otf lineage MODEL_ID --json", "a list, one object per model (lineage: newest "
         "first, back to the first fit)", dict_keys(command_function("model_row")), (d.ModelDoc,)),
        ("otf data frames CAMPAIGN --json", "a list, one object per labelled frame",
         dict_keys(command_function("frame_row")), (d.FrameDoc, d.Provenance)),
        ("otf status [CAMPAIGN] --json", "a list of campaigns; with CAMPAIGN one object",
         [*_status_keys(), "allocations"], (d.CampaignDoc,)),
        ("otf run CONFIG --json", "one object: the end-of-run summary", dict_keys(command_function("summary_data")),
         (d.CampaignDoc,)),
    ]


_JSON_EXTRA_CAMPAIGN = {
    "campaign": "Campaign name.",
    "status": "created, running, completed, failed or stopped.",
    "step": "MD steps done.",
    "total_steps": "MD steps to run (md.total_steps).",
    "model_id": "The campaign's current model.",
    "wall_seconds": "Wall time of every `otf run` of the campaign so far (s).",
}


def _json_description(key: str, models: tuple) -> str:
    for model in models:
        field = model.model_fields.get(key)
        if field is not None and field.description:
            return field.description
    if models == (documents.CampaignDoc,) and key in _JSON_EXTRA_CAMPAIGN:
        return _JSON_EXTRA_CAMPAIGN[key]
    return _JSON_EXTRA.get(key, "")


def json_reference() -> str:
    """The page of ``--json`` output."""
    lines = [
        "# JSON output (`--json`)",
        "",
        "<!-- generated by scripts/docs_hooks.py from the functions that build the rows: do not edit -->",
        "",
        "With `--json`, a listing command prints JSON on stdout and nothing else (progress and messages go "
        "to stderr), so it pipes into `jq` or `json.load`. Missing values are `null`. The keys below are "
        "read from the code that builds each row; `tests/test_docs.py` compares them with a real run's "
        "output.",
        "",
        "```bash",
        "otf checks cu-emt --json | python -c 'import json, sys; print([r[\"frmse\"] for r in json.load(sys.stdin)])'",
        "```",
        "",
    ]
    for command, what, keys, models in json_outputs():
        lines += [f"## `{command}`", "", what[0].upper() + what[1:] + ".", "", "| key | description |", "|---|---|"]
        lines += [f"| `{k}` | {_cell(_json_description(k, models))} |" for k in keys]
        lines.append("")
    lines += [
        "## `walkers` of a campaign with walkers",
        "",
        "`otf status` and `otf run --json` of a campaign with `walkers:` ([tutorial](../tutorials/walkers.md)) "
        "add `walkers`: a list, one object per walker (with `--walker`, that walker's), whose counts, "
        "errors and `dft_calls_per_1000_steps` are the walker's own (its labels over its MD steps).",
        "",
        "| key | description |",
        "|---|---|",
    ]
    walker_keys = dict_keys(command_function("walker_rows"))
    lines += [f"| `{k}` | {_cell(_json_description(k, (WalkerDoc,)))} |" for k in walker_keys]
    lines.append("")
    lines += [
        "## `otf validate MODEL_ID --benchmark NAME --json`",
        "",
        "One object: `model_id`, `benchmark`, `n_frames`, `energy_rmse_per_atom`, `energy_mae_per_atom` "
        "(eV/atom), `force_rmse`, `force_mae` (eV/Å, over force components), `virial_rmse_per_atom` (eV/atom; "
        "null without virials), and `by_config_type`: the same metrics per `config_type`.",
        "",
        "## `otf benchmark list --json`, `otf data frame FRAME_ID`",
        "",
        "The benchmark sets with their frame counts; one frame's whole "
        "[`FrameDoc`](documents.md#framedoc) as JSON.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# MkDocs events

GENERATED = {
    "reference/yaml.md": yaml_reference,
    "reference/cli.md": cli_reference,
    "reference/documents.md": documents_reference,
    "reference/json.md": json_reference,
}


def on_files(files, config):
    """Add the generated pages and the benchmark figures to the site."""
    for uri, make in GENERATED.items():  # wide tables: no table of contents on the right
        files.append(File.generated(config, uri, content="---\nhide:\n  - toc\n---\n\n" + make()))
    for png in sorted((REPO / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"explanation/figures/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """``::: otf_flows.OtfMDMaker`` in the API page documents the class where it is defined (the package
    exports it lazily, which static analysis cannot follow)."""
    maker = otf_flows.OtfMDMaker
    where = f"{maker.__module__}.{maker.__qualname__}"
    return markdown.replace("::: otf_flows.OtfMDMaker\n", f"::: {where}\n").replace(
        "(#otf_flows.OtfMDMaker)", f"(#{where})")
