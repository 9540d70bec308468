"""Name → function registries, filled by decorators where each function is defined (verl's
``register_adv_est`` / ``register_policy_loss`` style), so adding an estimator is one decorated
function and the config validates against the registered names (``Registry.names()``).

    ADVANTAGES = Registry("advantage estimator")

    @ADVANTAGES.register("grpo")
    def grpo(rewards, group_size=None, **kw): ...

    ADVANTAGES.get("grpo")      # the function; ValueError naming the known names otherwise
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """An ordered ``name -> callable`` table with a ``register`` decorator.

    ``register(name, *aliases)`` raises ValueError when a name is taken (two definitions of one
    name would make the lookup depend on import order); ``get`` raises ValueError naming the
    kind and the known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, *aliases: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            for key in (name, *aliases):
                if key in self._table:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._table[key] = fn
            return fn
        return deco

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._table[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of "
                             f"{sorted(self._table)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self._table[name]

    def __iter__(self):
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._table)})"


__all__ = ["Registry"]
