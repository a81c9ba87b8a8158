"""Sizes and durations as people write them: ``"64 GiB"``, ``"512 GB"``, ``"2 hours"``, ``"5m"``.

Kept free of third-party imports: the on-machine agent and the local hypervisor use it too.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

SIZE_HELP = "a size such as '16 GiB', '512 GB', '512MiB' or a whole number of bytes"
DURATION_HELP = "a duration such as '30 seconds', '5m', '2 hours', '1h30m' or a number of seconds"

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "p": 10**15,
    "pb": 10**15,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
    "pi": 2**50,
    "pib": 2**50,
}
_DURATION_UNITS = {
    **dict.fromkeys(["ms", "millisecond", "milliseconds"], 0.001),
    **dict.fromkeys(["s", "sec", "secs", "second", "seconds"], 1),
    **dict.fromkeys(["m", "min", "mins", "minute", "minutes"], 60),
    **dict.fromkeys(["h", "hr", "hrs", "hour", "hours"], 3600),
    **dict.fromkeys(["d", "day", "days"], 86400),
    **dict.fromkeys(["w", "week", "weeks"], 7 * 86400),
}
_NUMBER_AND_UNIT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | float | str) -> int:
    """Bytes in ``value``.

    >>> parse_size("64 GiB"), parse_size("512 GB"), parse_size(1024)
    (68719476736, 512000000000, 1024)
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_HELP}, not a boolean")
    if isinstance(value, (int, float)):
        size = value
    elif isinstance(value, str):
        match = _NUMBER_AND_UNIT.fullmatch(value)
        unit = match and match.group(2).lower()
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(f"expected {SIZE_HELP}")
        size = float(match.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError(f"expected {SIZE_HELP}, not {type(value).__name__}")
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"expected {SIZE_HELP} greater than zero")
    return int(size)


def parse_duration(value: int | float | str | timedelta) -> float:
    """Seconds in ``value``.

    >>> parse_duration("2 hours"), parse_duration("1h30m"), parse_duration("30 seconds"), parse_duration(5)
    (7200.0, 5400.0, 30.0, 5.0)
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}, not a boolean")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds, position = 0.0, 0
        for match in _NUMBER_AND_UNIT.finditer(value):
            unit = match.group(2).lower() or "s"
            if match.start() != position or unit not in _DURATION_UNITS:
                raise ValueError(f"expected {DURATION_HELP}")
            seconds += float(match.group(1)) * _DURATION_UNITS[unit]
            position = match.end()
        if position == 0 or position != len(value):
            raise ValueError(f"expected {DURATION_HELP}")
    else:
        raise ValueError(f"expected {DURATION_HELP}, not {type(value).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expected {DURATION_HELP} greater than zero")
    return seconds


def format_size(size: int | float) -> str:
    """``format_size(3 * 2**30) == '3 GiB'``: binary units, at most one decimal."""
    for unit, factor in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(size)} B"


def format_duration(seconds: float) -> str:
    """``format_duration(5400) == '1h30m'``; short and exact enough for logs and tables."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    parts, remaining = [], round(seconds)
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, factor)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2])
