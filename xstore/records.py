"""`Record`: a plain class with `__slots__` that compares, hashes and prints like a frozen dataclass.

For the types that every command reading an archive imports (the NAR events, a restore's result):
`dataclasses` imports `inspect` and generates and compiles code for each class, which at start-up costs
more than the whole NAR parser. A subclass lists its fields in `__slots__`, in order, and assigns them in
`__init__` as `Final` attributes, so mypy refuses any later assignment (at run time nothing stops one:
that check would cost every construction, and constructions are per archive entry).
"""

from __future__ import annotations


class Record:
    """Equality (same type, same fields), hashing and `repr` from `__slots__`."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
