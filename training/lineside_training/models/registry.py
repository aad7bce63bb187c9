"""A registry of keyword-only detector builders, in the manner of torchvision's."""

from __future__ import annotations

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
    return _BUILDERS[name](**kwargs)
