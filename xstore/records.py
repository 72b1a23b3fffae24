"""`Record` and `FrozenRecord`: plain classes with `__slots__` that compare, hash and print like frozen
dataclasses.

For the types that the commands moving archives and store paths import (NAR events, store paths, path
infos, narinfos, a copy's plan): `dataclasses` imports `inspect` (with `ast`, `dis` and `tokenize`) and
generates and compiles code for each class, which costs a command about 20 ms before it starts (measured:
the import 8-10 ms, 17 classes another 9-12 ms), more than the whole NAR parser. A subclass lists its
fields in `__slots__`, in order, and writes its own `__init__` taking them in that order.

- A `Record` assigns its fields in `__init__` as `Final` attributes, so mypy refuses any later
  assignment; at run time nothing stops one (that check would cost every construction, and the NAR
  events are made per archive entry).
- A `FrozenRecord` also refuses assignment at run time, as a frozen dataclass does (its values are keys
  of sets and dicts). It declares its fields in the class body and sets them in `__init__` with
  `object.__setattr__` (`records.setfield`); the type checker treats it as a frozen dataclass
  (`dataclass_transform`), so it checks the read-only fields too.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Any, ClassVar, Self, dataclass_transform
else:

    def dataclass_transform(**_kwargs: object) -> object:
        return lambda cls: cls


setfield = object.__setattr__  # how a FrozenRecord's __init__ sets a field


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

    def replace(self, **changes: Any) -> Self:
        """A copy with the fields named in `changes` replaced (as `dataclasses.replace`); the class's
        `__init__` must take every field by its name."""
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return type(self)(**values)


@dataclass_transform(frozen_default=True, eq_default=True)
class FrozenRecord(Record):
    """A `Record` whose fields cannot be assigned or deleted once set (`AttributeError`). Copies and
    pickles are made through `__init__`, with the fields in order."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field '{name}' of {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field '{name}' of {type(self).__name__}")

    def __reduce__(self) -> tuple[type[Self], tuple[object, ...]]:
        return type(self), self._values()
