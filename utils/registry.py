"""The one registry pattern of the toolkit's extension points (models, pruning methods,
datasets, export formats), the way timm's register_model / create_model work: a decorator puts
an entry under a name, ``names()`` lists them (the flags' choices and every list of names are
derived from it, never written by hand), ``get(name)`` refuses an unknown name in one line."""
from typing import Callable, Dict, Generic, Iterator, List, Optional, TypeVar

from utils.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, attribute: Optional[str] = None):
        """``kind`` names an entry in errors ("model", "pruning method"); ``attribute``, when
        given, is set on each registered entry to its name (a class learns what it is called)."""
        self.kind = kind
        self.attribute = attribute
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")`` on a class or function."""
        def wrap(entry: T) -> T:
            self.add(name, entry)
            return entry
        return wrap

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        if self.attribute is not None:
            setattr(entry, self.attribute, name)
        self._entries[name] = entry

    def names(self) -> List[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of: "
                            f"{', '.join(self.names())}")
        return self._entries[name]

    def remove(self, name: str) -> None:
        """Forget ``name`` (a test that registered an entry for itself)."""
        del self._entries[name]

    def with_entry(self, name: str, entry: T) -> "Registry[T]":
        """A copy in which ``name`` is ``entry`` (a test's variant of one entry)."""
        copy = Registry(self.kind)
        copy._entries = {**self._entries, name: entry}
        return copy

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self):
        return [(name, self._entries[name]) for name in self.names()]
