"""Pydantic's validation errors as the messages llmtap prints for a file a person wrote.

The config, the rules file and the model catalogue are declared as pydantic models; when
one does not validate, the person needs the FILE, the KEY as they would write it
(``budgets."team-a".limit_usd``, ``rules[0] (my-rule).match``, with a list item named
by its ``id``) and what that key takes, not pydantic's loc tuples and type names.

What a key takes is the ``description`` of its field (or of an ``Annotated`` type), or
the choices of a ``Literal``. An error is reported at the deepest key on its path that
says what it takes, with the value found there: a bad item of a described list is
reported as the list ("alerts must be a list of fractions ..., got [80]"), which is how
the person reads it. So, for every error::

    FILE: KEY must be EXPECTED, got VALUE
    FILE: KEY: unknown keys NAMES (allowed: ...)
    FILE: KEY: MESSAGE                  (a validator's ValueError)
    FILE: KEY.FIELD MESSAGE             (a check across fields, see :func:`field_error`)
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

_AS_DESCRIBED = "llmtap_as_described"
_FIELD = "llmtap_field"


def not_as_described() -> PydanticCustomError:
    """For a validator to raise when the value is not what its key's description says: the
    message is then the usual "KEY must be EXPECTED, got VALUE"."""
    return PydanticCustomError(_AS_DESCRIBED, "not as described")


def field_error(field: str, message: str) -> PydanticCustomError:
    """For a model validator that checks fields against each other to blame one of them:
    reported as ``KEY.FIELD MESSAGE``, e.g. ``budgets."b".downgrade_to is required with ...``."""
    return PydanticCustomError(_FIELD, "{field} {message}", {"field": field, "message": message})


def explain(exc: ValidationError, *, source: str, root: Any, document: Any, noun: str) -> str:
    """The errors of validating ``document`` (read from ``source``, a file name) as ``root``,
    one line each: see the module's docstring. ``noun`` names the document itself ("config")
    for errors about its top level."""
    lines: list[str] = []
    unknown: dict[tuple[Any, ...], list[str]] = {}
    for error in exc.errors():
        loc = tuple(error["loc"])
        nodes = _nodes(root, loc)
        if error["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        lines.append(_line(error, loc, nodes, document, noun))
    for parent, names in unknown.items():
        nodes = _nodes(root, parent)
        allowed = f" (allowed: {', '.join(nodes[-1].fields)})" if nodes[-1].fields else ""
        where = f"{_key(parent, document, nodes)}: unknown keys " if parent else f"unknown {noun} keys: "
        lines.append(where + ", ".join(names) + allowed)
    return "\n".join(f"{source}: {line}" for line in dict.fromkeys(lines))


@dataclass(frozen=True, slots=True)
class _Node:
    """One step of an error's path: what the key there takes, if it says."""

    expected: str | None
    #: Its keys, when the value there is a model.
    fields: tuple[str, ...]
    #: Whether the step INTO this key was a mapping's key (written quoted) or a field.
    keyed: bool


def _line(error: Any, loc: tuple[Any, ...], nodes: list[_Node], document: Any, noun: str) -> str:
    kind = error["type"]
    if kind == _FIELD:
        ctx = error["ctx"]
        return f"{_join(_key(loc, document, nodes), ctx['field'])} {ctx['message']}"
    if kind == "value_error":
        return f"{_key(loc, document, nodes) or noun}: {error['ctx']['error']}"
    depth = next((i for i in range(len(nodes) - 1, -1, -1) if nodes[i].expected), None)
    if depth is None:
        return f"{_key(loc, document, nodes) or noun}: {error['msg'][:1].lower()}{error['msg'][1:]}"
    at = loc[:depth]
    return (
        f"{_key(at, document, nodes) or noun} must be {nodes[depth].expected}, got {_value(document, at)!r}"
    )


def _nodes(root: Any, loc: tuple[Any, ...]) -> list[_Node]:
    """A node for the top and for each step of ``loc`` that the declared types explain."""
    tp, expected = _unwrap(root, None)
    nodes = [_Node(expected, _fields(tp), keyed=False)]
    for part in loc:
        origin = get_origin(tp)
        keyed = False
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            field = tp.model_fields[part]
            tp, expected = _unwrap(field.annotation, field.description)
        elif origin in (dict, Mapping):
            tp, expected = _unwrap(get_args(tp)[1], None)
            keyed = True
        elif origin in (list, tuple, Sequence) and isinstance(part, int):
            args = get_args(tp)
            item = args[0] if len(args) == 1 or args[-1] is Ellipsis else args[min(part, len(args) - 1)]
            tp, expected = _unwrap(item, None)
        else:
            break  # a union's member tags, or a type that says nothing more
        nodes.append(_Node(expected, _fields(tp), keyed))
    return nodes


def _unwrap(tp: Any, expected: str | None) -> tuple[Any, str | None]:
    """``tp`` without ``Annotated`` and ``| None``, and what it takes: the description given,
    else one in its ``Annotated`` metadata, else a ``Literal``'s choices."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp, *metadata = get_args(tp)
            described = [m.description for m in metadata if isinstance(m, FieldInfo) and m.description]
            expected = expected or (described[-1] if described else None)
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(members) != 1:
                return tp, expected
            tp = members[0]
        elif origin is Literal:
            return tp, expected or "one of " + ", ".join(map(str, get_args(tp)))
        else:
            return tp, expected


def _fields(tp: Any) -> tuple[str, ...]:
    return tuple(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else ()


def _key(loc: tuple[Any, ...], document: Any, nodes: list[_Node]) -> str:
    """``loc`` as the person writes it: fields dotted, mapping keys quoted, list items
    indexed and named by their ``id`` when they have one."""
    key = ""
    for depth, part in enumerate(loc, start=1):
        if isinstance(part, int):
            item = _value(document, loc[:depth])
            named = isinstance(item, Mapping) and isinstance(item.get("id"), str)
            key += f"[{part}]" + (f" ({item['id']})" if named else "")
        elif depth < len(nodes) and nodes[depth].keyed:
            key = _join(key, f'"{part}"')
        else:
            key = _join(key, str(part))
    return key


def _join(key: str, part: str) -> str:
    return f"{key}.{part}" if key else part


def _value(document: Any, loc: tuple[Any, ...]) -> Any:
    """What ``document`` holds at ``loc``; None where it holds nothing."""
    for part in loc:
        if isinstance(document, Mapping):
            document = document.get(part)
        elif isinstance(document, list | tuple) and isinstance(part, int) and part < len(document):
            document = document[part]
        else:
            return None
    return document


class Table(BaseModel):
    """A table (TOML) or mapping (YAML) a person writes: a key the model does not declare is
    a mistake (a typo would otherwise silently do nothing), and what it becomes is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _http_url(value: str) -> str:
    if not is_http_url(value):
        raise not_as_described()
    return value


#: The value types the files share.
Text = Annotated[str, Field(pattern=r"\S", description="a non-empty string")]
#: A non-empty string inside a described table or list, which the message names instead.
Item = Annotated[str, Field(pattern=r"\S")]
HttpUrl = Annotated[str, AfterValidator(_http_url), Field(description="an http:// or https:// URL")]
#: A duration: a finite number above 0 (``inf`` would overflow what it sizes or schedules).
Seconds = Annotated[
    float, Strict(), Field(gt=0, allow_inf_nan=False, description="a positive number of seconds")
]
#: A non-empty list of names (apps, models, providers), as a filter.
Names = Annotated[tuple[Item, ...], Field(min_length=1)]
