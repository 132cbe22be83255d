"""Griffe extension for the documentation site: the package's docstrings use Sphinx roles
(``:class:`~otf_flows.x.Y```, ``:meth:`make```) and reST literals; MkDocs renders Markdown. This turns
the roles into code spans and splits numpy parameter entries that name several parameters at once
(``md, tolerances, ...``) into one entry each, so every parameter gets its own row and type.
``mkdocs.yml`` loads it (``extensions:`` of the mkdocstrings Python handler)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|obj|exc):`~?([^`]+)`")
_DESIGN = re.compile(r" ?\(DESIGN §[\d.]+[^)]*\)")
_GROUPED = re.compile(
    r"^(?P<indent>[ \t]*)(?P<names>[A-Za-z_]\w*(?:, [A-Za-z_]\w*)+)[ \t]*\n(?P<body>(?:(?P=indent)[ \t]+.*\n?)+)",
    re.MULTILINE,
)


def _role(match: re.Match) -> str:
    target = match.group(1)
    return f"`{target.rsplit('.', 1)[-1] if match.group(0).count('~') else target}`"


def clean(text: str) -> str:
    """A docstring with Sphinx roles as code spans and grouped numpy parameters split."""
    text = _ROLE.sub(_role, text)
    text = _DESIGN.sub("", text)  # pointers into the developers' design notes

    def split(match: re.Match) -> str:
        names = match["names"].split(", ")
        return "".join(f"{match['indent']}{name}\n{match['body'].rstrip()}\n" for name in names)

    return _GROUPED.sub(split, text)


class RstRoles(griffe.Extension):
    """Clean every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = clean(obj.docstring.value)
