"""A registry of keyword-only detector builders, in the manner of torchvision's."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from lineside_inspect.errors import ConfigError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
B = TypeVar("B", bound=Callable[..., nn.Module])


def register(name: str) -> Callable[[B], B]:
    def deco(fn: B) -> B:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered detector; every builder takes keyword arguments only."""
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    builder = _BUILDERS[name]
    # a config's model_kwargs (``--set model_kwargs.widht=2``) reach the builder: a name it
    # does not take was a TypeError traceback from deep in the model (CLI sweep, session 37)
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            takes = sorted(k for k in params if k != "num_classes")
            raise ConfigError(f"model {name}: model_kwargs {', '.join(unknown)} not taken; "
                              f"it takes {', '.join(takes) or 'none'}")
    try:
        return builder(**kwargs)
    except TypeError as exc:  # a builder passing **kwargs on (lsdet): its class's words
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(f"model {name}: model_kwargs: {exc}") from None
