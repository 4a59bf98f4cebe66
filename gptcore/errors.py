"""The one exception type for bad input from a user, and the range check every config's validate() uses."""

import math


class GPTCoreError(ValueError):
    """Bad input: the message is one line that says what is wrong and how to fix it.

    The scripts print it as `error: <message>` and exit with status 2, without a traceback.
    """


def check_range(name: str, value, *, kind: type = float, low=None, high=None, low_open: bool = False,
                high_open: bool = False, hint: str = ""):
    """Raises a GPTCoreError naming the field, its value and the allowed range, unless value is a `kind` (int or
    float; a bool is neither) within [low, high] (an open end where low_open / high_open). NaN is never allowed.
    """
    allowed = ((int,) if kind is int else (int, float))
    if isinstance(value, bool) or not isinstance(value, allowed) or (kind is float and not math.isfinite(value)):
        raise GPTCoreError(f"{name}={value!r} is not allowed: it must be a finite {'integer' if kind is int else 'number'}"
                           f"{_span(low, high, low_open, high_open)}{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise GPTCoreError(f"{name}={value!r} is out of range: it must be{_span(low, high, low_open, high_open)}{hint}")


def _span(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""
