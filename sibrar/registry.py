"""Name -> object registries whose lookup errors list the valid names and the closest match.

This module sits at the bottom of the package (it imports only `sibrar.errors`), so the config
parser can resolve `model.name` here without importing the models: each model module registers
itself (with its config dataclass) when it is imported, and `import sibrar` imports `sibrar.models`,
so the built-in models are registered before any config is parsed from Python or the command line.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from sibrar.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short names (used in configs and on the command line) to objects."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries)) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name_message(kind: str, name: str, valid: object) -> str:
    """'unknown model 'sibrr'; did you mean 'sibrar'? valid: mf, pop, sibrar'."""
    names = sorted(str(v) for v in valid)  # type: ignore[union-attr]
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} valid: {', '.join(names) or '(none)'}"


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its class (a `sibrar.models.base.Model`) and the frozen dataclass that
    parses its `model:` section."""

    cls: type
    config_cls: type


MODELS: Registry[ModelEntry] = Registry("model")
