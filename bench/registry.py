"""Typed registries for methods, datasets and perturbation settings.

Built-ins register with a decorator; third-party packages register through Python entry
points (groups ``defectbench.methods``, ``defectbench.datasets``, ``defectbench.settings``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RegistryError(LookupError):
    """Raised for unknown names and duplicate registrations."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with where it came from."""

    name: str
    obj: T
    description: str
    origin: str
    aliases: tuple[str, ...] = ()


def _origin_of(obj: object) -> str:
    """Return ``module:qualname`` (and file) of an object, to name it in errors."""
    module = getattr(obj, "__module__", "?")
    qualname = getattr(obj, "__qualname__", repr(obj))
    try:
        source = inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except TypeError:
        source = None
    return f"{module}:{qualname}" + (f" ({source})" if source else "")


class Registry(Generic[T]):
    """A name -> object mapping with aliases, entry points and helpful errors.

    Args:
        kind: What is registered, for messages ("method", "dataset", "setting").
        entry_point_group: Entry point group scanned for third-party plugins.
        builtin_package: Package whose submodules are imported to trigger the
            decorators of built-ins (so no hand-kept list of built-ins exists).
        on_add: Called with each new entry before it is stored, to check or complete the
            object (the method registry gives classes their registered name); it raises
            :class:`RegistryError` to refuse one.
    """

    def __init__(
        self,
        kind: str,
        entry_point_group: str,
        builtin_package: str | None,
        on_add: Callable[[Entry[T]], None] | None = None,
    ) -> None:
        self.kind = kind
        self.on_add = on_add
        self.entry_point_group = entry_point_group
        self.builtin_package = builtin_package
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False

    def register(
        self,
        name: str,
        *,
        description: str = "",
        aliases: tuple[str, ...] = (),
    ) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (and its aliases)."""

        def decorator(obj: T) -> T:
            self.add(name, obj, description=description, aliases=aliases)
            return obj

        return decorator

    def add(
        self,
        name: str,
        obj: T,
        *,
        description: str = "",
        aliases: tuple[str, ...] = (),
        origin: str | None = None,
    ) -> None:
        """Register ``obj``; a name or alias that is taken is an error naming both origins."""
        origin = origin or _origin_of(obj)
        for key in (name, *aliases):
            existing = self._resolve_key(key)
            if existing is not None:
                other = self._entries[existing]
                if other.obj is obj:
                    return  # the same object imported twice (e.g. module reloaded)
                message = (
                    f"duplicate {self.kind} name {key!r}: registered by {other.origin} "
                    f"and again by {origin}"
                )
                raise RegistryError(message)
        entry = Entry(name, obj, description, origin, tuple(aliases))
        if self.on_add is not None:
            self.on_add(entry)
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name

    def _resolve_key(self, key: str) -> str | None:
        if key in self._entries:
            return key
        return self._aliases.get(key)

    def load_plugins(self) -> None:
        """Import built-in submodules and third-party entry points (once)."""
        if self._loaded:
            return
        self._loaded = True
        if self.builtin_package:
            package = importlib.import_module(self.builtin_package)
            for module_info in pkgutil.iter_modules(package.__path__):
                if not module_info.name.startswith("_"):
                    importlib.import_module(f"{self.builtin_package}.{module_info.name}")
        for entry_point in entry_points(group=self.entry_point_group):
            obj = entry_point.load()
            if entry_point.name in self._entries and self._entries[entry_point.name].obj is obj:
                continue  # the plugin's module already used the decorator
            origin = (
                f"entry point {entry_point.value!r} of {entry_point.dist.name}"
                if (entry_point.dist)
                else f"entry point {entry_point.value!r}"
            )
            description = (inspect.getdoc(obj) or "").split("\n")[0]
            description = getattr(obj, "description", None) or description
            self.add(entry_point.name, obj, description=description, origin=origin)

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or an alias of it."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """Return the full entry for ``name``; unknown names get "did you mean"."""
        self.load_plugins()
        key = self._resolve_key(name)
        if key is None:
            choices = sorted([*self._entries, *self._aliases])
            close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            message = (
                f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: "
                f"{', '.join(sorted(self._entries))}."
            )
            raise RegistryError(message)
        return self._entries[key]

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        self.load_plugins()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        self.load_plugins()
        return iter([self._entries[name] for name in sorted(self._entries)])

    def __contains__(self, name: str) -> bool:
        self.load_plugins()
        return self._resolve_key(name) is not None
