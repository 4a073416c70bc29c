"""Exact money and point arithmetic (RULES.md §0).

Inside the engine every cash-like value (CNY, stable points, quota, releases)
is an ``int`` of cents and every equity-point value an ``int`` of 1e-8 units;
rates are :class:`fractions.Fraction`.  ``Decimal`` only appears at the edges:
parsing input and formatting output.  Nothing here ever touches a float.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction

CENTS = 100  # minor units per CNY / stable point / quota unit
UNITS = 10**8  # minor units per equity point
MAX_EXPONENT = 24  # |amount or rate| below 10**25 and, when non-zero, above 10**-25
MAX_DIGITS = 40
CASH_PLACES = 2
POINT_PLACES = 8


class AmountError(ValueError):
    """A value that is not a usable decimal amount."""


def _shown(value: object) -> str:
    """The value as the user wrote it, quoted: ``'1.001'`` (never ``Decimal('1.001')``)."""
    return repr(str(value)) if isinstance(value, Decimal) else repr(value)


def to_decimal(value: object, what: str = "amount") -> Decimal:
    """Read a decimal from an int, a decimal string or a Decimal; never from a float.

    A float has already lost the decimal the user wrote, so it is refused here;
    the YAML loader of the scenario reader hands over Decimals instead.
    """
    if isinstance(value, bool):
        raise AmountError(f"{what} must be a number, not {_shown(value)}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise AmountError(f"{what} is not a number: {_shown(value)}") from None
    else:
        raise AmountError(f"{what} must be a decimal number, got {type(value).__name__}")
    if not result.is_finite():
        raise AmountError(f"{what} must be finite, got {_shown(value)}")
    # Far beyond any amount or rate: refused here, before it can overflow a scaling or
    # build a gigantic Fraction.
    if result and not -MAX_EXPONENT <= result.adjusted() <= MAX_EXPONENT:
        raise AmountError(f"{what} is out of range: {_shown(value)}")
    if len(result.as_tuple().digits) > MAX_DIGITS:
        raise AmountError(f"{what} has too many digits: {_shown(value)}")
    return result


def to_fraction(value: object, what: str = "rate") -> Fraction:
    return Fraction(to_decimal(value, what))


def _to_minor(value: object, places: int, what: str) -> int:
    exact = to_decimal(value, what)
    scaled = exact.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise AmountError(f"{what} has more than {places} decimal places: {_shown(value)}")
    return int(scaled)


def to_cents(value: object, what: str = "amount") -> int:
    """A cash amount in cents; more than 2 decimal places is an error, not a rounding."""
    return _to_minor(value, CASH_PLACES, what)


def to_units(value: object, what: str = "points") -> int:
    """An equity-point amount in 1e-8 units; more than 8 decimal places is an error."""
    return _to_minor(value, POINT_PLACES, what)


def floor_div(numerator: int, denominator: int) -> int:
    return numerator // denominator


def ceil_div(numerator: int, denominator: int) -> int:
    return -((-numerator) // denominator)


def floor_mul(amount: int, rate: Fraction) -> int:
    """``amount × rate`` rounded down, with one division."""
    return (amount * rate.numerator) // rate.denominator


def format_minor(value: int, places: int) -> str:
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**places)
    return f"{sign}{whole}.{frac:0{places}d}"


def format_cents(cents: int) -> str:
    return format_minor(cents, CASH_PLACES)


def format_units(units: int) -> str:
    return format_minor(units, POINT_PLACES)


def cents_to_decimal(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-CASH_PLACES)


def units_to_decimal(units: int) -> Decimal:
    return Decimal(units).scaleb(-POINT_PLACES)


def format_ratio_down(numerator: int, denominator: int, places: int) -> str:
    """An exact ratio reported rounded down to ``places`` decimals (the equity price)."""
    return format_minor((numerator * 10**places) // denominator, places)
