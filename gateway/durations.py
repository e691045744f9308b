"""Durations and rates as admins write them: ``300``, ``"2s"``, ``"5m"``,
``"35d"``; ``"100/hour"``."""

from __future__ import annotations

import math
import re

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0,
           "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")
# A day of seconds times ten years: past this a duration is a typo.
LONGEST = 10 * 365 * 86400.0


def seconds(value: float | str) -> float:
    """Seconds of a duration (a number of seconds, or "2s", "5m", "12h",
    "35d", "2w"); raises ValueError with what was expected."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as \"5m\", got {value!r}")
    if isinstance(value, int | float):
        found = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"expected a duration such as 300, \"2s\", \"5m\", \"12h\" or "
                             f"\"35d\", got {value!r}")
        found = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if not math.isfinite(found) or found < 0 or found > LONGEST:
        raise ValueError(f"expected a duration from 0 to 10 years, got {value!r}")
    return found


def duration_problem(value: float | str) -> str | None:
    """For a config validator: the problem, or None."""
    try:
        seconds(value)
    except ValueError as exc:
        return str(exc)
    return None


def per_second(rate: str) -> tuple[float, float]:
    """("100/hour") -> (100.0, 3600.0): a count and its period in seconds;
    raises ValueError."""
    match = _RATE.match(rate.lower()) if isinstance(rate, str) else None
    if match is None or match.group(2) not in PERIODS:
        raise ValueError(f"expected a rate such as \"100/hour\" (per second, minute, hour "
                         f"or day), got {rate!r}")
    count = float(match.group(1))
    if not math.isfinite(count) or count <= 0:
        raise ValueError(f"a rate needs a count above 0, got {rate!r}")
    return count, PERIODS[match.group(2)]


def describe(value: float) -> str:
    """Seconds as the shortest exact unit: 300 -> "5m"."""
    for unit in ("w", "d", "h", "m"):
        size = UNITS[unit]
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"
