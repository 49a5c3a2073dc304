"""Quantities: Kubernetes resource amounts (`500m`, `2`, `128Mi`, `1e3`) as exact numbers.

Purely computational, no side effects.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_SUFFIXES: dict[str, Fraction] = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE](?P<exp>[+-]?[0-9]+))?$"
)


class QuantityError(ValueError):
    pass


def parse_quantity(value: str | int | float) -> Fraction:
    """Parse a quantity to an exact value: `500m` -> 1/2, `1Ki` -> 1024."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(Decimal(repr(value)))
    m = _QUANTITY.match(value.strip())
    if not m:
        raise QuantityError(f"{value!r} is not a quantity (examples: 500m, 2, 128Mi, 1Gi)")
    try:
        number = Fraction(Decimal(m.group("num")))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"{value!r} is not a quantity") from exc
    if m.group("exp") is not None:
        return number * Fraction(10) ** int(m.group("exp"))
    return number * _SUFFIXES[m.group("suffix") or ""]


def cpu_millis(value: str | int | float) -> int:
    """CPU in millicores, rounded up as the kubelet does."""
    q = parse_quantity(value) * 1000
    return int(-(-q.numerator // q.denominator))


def to_bytes(value: str | int | float) -> int:
    q = parse_quantity(value)
    return int(-(-q.numerator // q.denominator))


def format_bytes(n: int) -> str:
    """Bytes for people: exact (`128Mi`) when it is a whole unit, else one decimal (`22.5Gi`)."""
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            return f"{n // size}{unit}" if n % size == 0 else f"{n / size:.1f}{unit}"
    return str(n)


def format_millis(m: int) -> str:
    return str(m // 1000) if m % 1000 == 0 else f"{m}m"
