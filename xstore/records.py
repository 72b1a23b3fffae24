"""`Record`: a plain class with `__slots__` that compares, hashes and prints like a frozen dataclass.

For the types that every command reading an archive imports (the NAR events, a restore's result):
`dataclasses` imports `inspect` and generates and compiles code for each class, which at start-up costs
more than the whole NAR parser. A subclass lists its fields in `__slots__`, in order, and assigns them in
`__init__` as `Final` attributes, so mypy refuses any later assignment (at run time nothing stops one:
that check would cost every construction, and constructions are per archive entry).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import ClassVar


class Record:
    """Equality (same type, same fields), hashing and `repr` from the fields in `__slots__`, a base
    class's first (a subclass that only gives a kind its own type declares `__slots__ = ()`)."""

    __slots__: tuple[str, ...] = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._fields = tuple(
            name for klass in reversed(cls.__mro__) for name in vars(klass).get("__slots__", ())
        )

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"
