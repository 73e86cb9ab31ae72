"""A wrapper that keeps key material and other secrets out of reprs, logs and tracebacks."""

from __future__ import annotations

from typing import Generic, NoReturn, TypeVar

T = TypeVar("T")


class Secret(Generic[T]):
    """Holds a sensitive value; ``repr``/``str`` never show it, ``reveal()`` does.

    Naming the call ``reveal`` makes every place that touches the raw value greppable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return f"{type(self).__name__}('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        import hmac

        left, right = self._value, other._value
        if isinstance(left, bytes) and isinstance(right, bytes):
            return hmac.compare_digest(left, right)
        if isinstance(left, str) and isinstance(right, str):
            return hmac.compare_digest(left.encode(), right.encode())
        return bool(left == right)

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret values cannot be pickled")
