"""Validation of values the application hands to the recording helpers.

Each check returns the value to record or raises an `InvalidArgumentError` (a `ValueError` or
`TypeError` subclass) that names the argument. What happens next is the caller's mode:
strict re-raises it, lenient (the default) drops the whole call and counts it in
`gatewayz_metrics_invalid_values_total{metric, argument}`, following the OpenTelemetry
API rule that instrumentation never throws at run time. Configuration (buckets, caps)
is checked elsewhere and always raises.
"""

from __future__ import annotations

import math
import operator
import os
import sys

STRICT_ENV = "GATEWAYZ_METRICS_STRICT"
"""Set to `1` (or `true`, `yes`, `on`) to make every `GatewayMetrics` raise on invalid values."""


def strict_from_env() -> bool:
    """Whether `GATEWAYZ_METRICS_STRICT` asks for strict recording."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class InvalidArgumentError(Exception):
    """An invalid value for one argument of a recording call."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


class InvalidValueError(InvalidArgumentError, ValueError):
    """A value of the right type outside what the argument accepts."""


class InvalidTypeError(InvalidArgumentError, TypeError):
    """A value of the wrong type."""


class InvalidCallError(InvalidArgumentError, RuntimeError):
    """A call that is invalid where it is made (e.g. `set_usage` twice)."""


MAX_COUNT = int(sys.float_info.max)
"""Beyond this, a count cannot be added to a float sample (OverflowError)."""


def count(argument: str, value: object) -> int:
    """A non-negative integer (bools and floats rejected), or a precise error."""
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    if isinstance(value, bool):
        raise InvalidTypeError(argument, f"{argument} must be an int, got bool {shown(value)}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidTypeError(
            argument, f"{argument} must be an int, got {type(value).__name__} {shown(value)}"
        ) from None
    if number < 0:
        raise InvalidValueError(argument, f"{argument} must be >= 0, got {shown(value)}")
    if number > MAX_COUNT:
        raise InvalidValueError(
            argument, f"{argument} must be finite, got an int of {_digits(number)} digits"
        )
    return number


def number(
    argument: str,
    value: object,
    *,
    minimum: float | None = 0.0,
    maximum: float | None = None,
) -> float:
    """A finite real number within [minimum, maximum], or a precise error."""
    kind = type(value)
    if kind is float or kind is int:
        try:
            result = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an int beyond float's range (10**400): not finite
            raise InvalidValueError(
                argument, f"{argument} must be finite, got an int of {_digits(value)} digits"
            ) from None
    elif isinstance(value, (bool, str, bytes)):
        raise InvalidTypeError(
            argument, f"{argument} must be a number, got {kind.__name__} {shown(value)}"
        )
    else:
        try:
            result = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidTypeError(
                argument, f"{argument} must be a number, got {kind.__name__} {shown(value)}"
            ) from None
        except OverflowError:
            raise InvalidValueError(argument, f"{argument} must be finite") from None
    if not math.isfinite(result):
        raise InvalidValueError(argument, f"{argument} must be finite, got {shown(value)}")
    if minimum is not None and result < minimum:
        raise InvalidValueError(argument, f"{argument} must be >= {minimum:g}, got {shown(value)}")
    if maximum is not None and result > maximum:
        raise InvalidValueError(argument, f"{argument} must be <= {maximum:g}, got {shown(value)}")
    return result


def signed(argument: str, value: object) -> float:
    """A finite real number, negative ones included."""
    return number(argument, value, minimum=None)


def fraction(argument: str, value: object) -> float:
    """A finite real number within [0, 1]."""
    return number(argument, value, maximum=1.0)


def availability(argument: str, value: object) -> float:
    """1.0 or 0.0, from a bool or the numbers 1 and 0."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    result = number(argument, value, minimum=None)
    if result not in (0.0, 1.0):
        raise InvalidValueError(
            argument, f"{argument} must be 0 or 1 (or a bool), got {shown(value)}"
        )
    return result


def status_code(value: object) -> int:
    """An HTTP status code between 100 and 599."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(
            "status_code",
            f"status_code must be an int, got {type(value).__name__} {shown(value)}",
        )
    if not 100 <= value <= 599:
        raise InvalidValueError(
            "status_code",
            f"status_code must be an HTTP status between 100 and 599, got {shown(value)}",
        )
    return int(value)


def shown(value: object) -> str:
    # repr() of a hostile object may itself raise, or be huge: the message stays bounded.
    try:
        text = repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _digits(value: object) -> str:
    try:
        return str(int(value).bit_length() * 30103 // 100000 + 1)  # type: ignore[call-overload]
    except Exception:
        return "many"
