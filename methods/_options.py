"""Options of the method adapters: what the user set, what a checkpoint changed, range checks.

Every method's options are a frozen dataclass whose ``None`` fields mean "the profile's
value"; these functions work on any such dataclass. The checks raise ``ValueError`` with the
message ``option NAME: expected ..., got VALUE``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def explicit_options(options: Any) -> dict[str, Any]:
    """The fields of an options dataclass that were given a value, by name.

    Laid over a profile's defaults (``{**defaults, **explicit_options(options)}``) they give
    the resolved options: an unset (``None``) field keeps the profile's value.

    Args:
        options: A dataclass instance.

    Returns:
        Field name to value for every field that is not ``None``, in field order.
    """
    values = {item.name: getattr(options, item.name) for item in dataclasses.fields(options)}
    return {name: value for name, value in values.items() if value is not None}


def changed_options(saved: Any, current: Any) -> list[str]:
    """``name=value`` (the saved value) of every field where two options dataclasses differ.

    Args:
        saved: Options read back from a checkpoint.
        current: Options of the same class that the instance holds now.
    """
    return [
        f"{item.name}={getattr(saved, item.name)!r}"
        for item in dataclasses.fields(saved)
        if getattr(saved, item.name) != getattr(current, item.name)
    ]


def check_at_least(options: Any, minimums: Mapping[str, int]) -> None:
    """Check that each named field, when set, is at least its minimum.

    Raises:
        ValueError: Naming the first field below its minimum.
    """
    for name, lowest in minimums.items():
        at_least = functools.partial(operator.le, lowest)  # at_least(value): lowest <= value
        _check_each(options, (name,), at_least, f"an integer >= {lowest}")


def check_positive(options: Any, names: Iterable[str]) -> None:
    """Check that each named field, when set, is finite and greater than 0.

    Raises:
        ValueError: Naming the first field that is not.
    """
    _check_each(options, names, lambda value: math.isfinite(value) and value > 0, "a number > 0")


def check_non_negative(options: Any, names: Iterable[str]) -> None:
    """Check that each named field, when set, is a number of at least 0 (NaN is not).

    Raises:
        ValueError: Naming the first field that is not.
    """
    _check_each(options, names, lambda value: value >= 0, "a number >= 0")


def check_choices(options: Any, choices: Mapping[str, Iterable[str]]) -> None:
    """Check that each named field, when set, is one of its allowed values.

    Raises:
        ValueError: Naming the first field whose value is not allowed, and the allowed ones.
    """
    for name, allowed in choices.items():
        value = getattr(options, name)
        allowed = tuple(allowed)
        if value is not None and value not in allowed:
            message = f"option {name}: expected one of {', '.join(allowed)}, got {value!r}"
            raise ValueError(message)


def _check_each(
    options: Any, names: Iterable[str], accepts: Callable[[Any], bool], expected: str
) -> None:
    for name in names:
        value = getattr(options, name)
        if value is not None and not accepts(value):
            raise ValueError(f"option {name}: expected {expected}, got {value}")
