"""Check a request's arguments against the signature and type hints of the op that serves it."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import BadRequest


def call_op(op: str, fn: Callable[..., dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
    """Call `fn(**args)` after checking names and types; a mismatch is a BadRequest naming the argument."""
    params, hints = _spec(fn)
    allowed = ", ".join(params) or "none"
    for name, value in args.items():
        if name not in params:
            raise BadRequest(f"op {op!r} has no argument {name!r}; its arguments: {allowed}")
        hint = hints.get(name, Any)
        if not _matches(value, hint):
            raise BadRequest(
                f"argument {name!r} of op {op!r} must be {_describe(hint)}, not {type(value).__name__} {value!r}"
            )
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in args]
    if missing:
        raise BadRequest(f"op {op!r} needs argument {missing[0]!r}; its arguments: {allowed}")
    return fn(**args)


@functools.lru_cache(maxsize=None)
def _spec(fn: Callable[..., Any]) -> tuple[Mapping[str, inspect.Parameter], dict[str, Any]]:
    return inspect.signature(fn).parameters, typing.get_type_hints(fn)


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(_matches(v, item) for v in value.values())
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint)) if typing.get_origin(hint) is None else str(hint)
