"""Base class of every configuration model (unknown keys, booleans given as numbers and integers
the store cannot hold are errors), the YAML loader of configuration files, and what every reader of
configuration shares: a pydantic error as one line, a relative path made absolute."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

INT64_MAX = 2**63 - 1
"""Largest integer the store holds (MongoDB/BSON integers are signed 64-bit)."""


def _leaf_types(annotation: Any) -> set[type] | None:
    """Scalar types a field accepts, looking through unions and containers; None when it takes
    ``Any`` or a nested model (that model checks its own fields)."""
    if annotation is Any:
        return None
    origin = get_origin(annotation)
    if origin is Literal:
        return {type(a) for a in get_args(annotation)}
    if origin is Annotated:
        return _leaf_types(get_args(annotation)[0])
    args = get_args(annotation)
    if args:
        kinds: set[type] = set()
        for arg in args:
            if arg is Ellipsis:
                continue
            sub = _leaf_types(arg)
            if sub is None:
                return None
            kinds |= sub
        return kinds
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return None
    return {annotation} if isinstance(annotation, type) else None


def _number_error(value: Any, kinds: set[type]) -> tuple[tuple, Any, str] | None:
    """Why ``value`` is refused for a field taking ``kinds`` (a boolean where only numbers are
    allowed, or an integer beyond int64) as (location inside the value, bad item, message);
    None when it is not."""
    if isinstance(value, (dict, list, tuple)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if (found := _number_error(item, kinds)) is not None:
                return ((key, *found[0]), *found[1:])
        return None
    if not kinds & {int, float}:
        return None
    if isinstance(value, bool):
        return None if bool in kinds else ((), value, "must be a number, not a boolean")
    if float in kinds or int not in kinds:
        return None
    number = value
    if isinstance(value, str) and str not in kinds:  # PyYAML reads 1e30 as a string
        try:
            number = float(value)
        except ValueError:
            return None
    if isinstance(number, (int, float)) and abs(number) > INT64_MAX:
        return (), value, f"must be an integer of magnitude at most 2**63 - 1 = {INT64_MAX} (64-bit in the store)"
    return None


class Strict(BaseModel):
    """A pydantic model that forbids unknown keys, validates defaults, and refuses booleans for
    numbers (pydantic's lax mode reads ``true`` as 1) and integers past 64 bits."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        # a model validator, not field_validator("*"): before-validators are not allowed on the
        # discriminator fields of tagged unions (reference.engine)
        if not isinstance(data, dict):
            return data
        errors = []
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            kinds = None if field is None else _leaf_types(field.annotation)
            found = None if kinds is None else _number_error(value, kinds)
            if found is not None:
                inner, item, message = found
                errors.append(InitErrorDetails(type=PydanticCustomError("number_type", message), loc=(key, *inner),
                                               input=item))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

    def as_dict(self) -> dict:
        """The model in monty's MSON form, so that Makers holding it (jobflow jobs, FireWorks specs)
        serialise: the fields that were set, which :meth:`from_dict` validates again (validators that
        look at the keys given, such as ``refit``'s e0 / e0_method, see the same keys)."""
        return {"@module": type(self).__module__, "@class": type(self).__name__,
                **self.model_dump(mode="json", exclude_unset=True)}

    @classmethod
    def from_dict(cls, d: dict):
        """The model of an :meth:`as_dict` mapping."""
        return cls.model_validate({k: v for k, v in d.items() if not k.startswith("@")})


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate mapping keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first given at line {seen[key]})",
                            key_node.start_mark,
                        )
                    seen[key] = key_node.start_mark.line + 1
                except TypeError:  # unhashable key: the base class reports it
                    continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`UniqueKeyLoader`; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=UniqueKeyLoader)


INTERNAL_LOC = ("function-", "tagged-union", "Ase", "Cp2k", "Vasp", "StructureFile", "StructureBuilder",
                "StructureAtoms")
"""Starts of entries of a pydantic error location that name no key of the YAML (validators, union members)."""


def error_line(err: ValidationError, where: str = "", *, skip: int = 0, got: bool = False) -> str:
    """The first error of ``err`` as one line: ``where.key.path: message`` (and ``(got value)`` with ``got``).

    Parameters
    ----------
    err
        A pydantic validation error.
    where
        What was validated (``"refit"``, ``"reference_maker"``); empty: the location alone.
    skip
        Leading entries of the error's location to leave out (e.g. a tagged union's tag).
    got
        Append the refused value (not for a mapping).
    """
    e = err.errors()[0]
    loc = [str(x) for x in e["loc"][skip:] if not str(x).startswith(INTERNAL_LOC)]
    path = ".".join(p for p in (where, *loc) if p)
    message = e["msg"].removeprefix("Value error, ")
    if got and "input" in e and not isinstance(e["input"], dict):
        message += f" (got {e['input']!r})"
    return f"{path}: {message}" if path else message


def absolute_path(path: str | Path, base: str | Path) -> str:
    """``path`` made absolute against the directory ``base`` (an absolute ``path`` stays), resolved."""
    return str((Path(base) / path).resolve())
