"""Sizes as operators write them: 1G, 512MiB, 4096."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``text``; suffixes K, M, G, T, P (with optional iB/B) are powers of 1024."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G/T/P suffix")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def approx_size(n: float) -> str:
    """``n`` bytes for people to read: ``512 B``, ``1.5 MiB``, ``3.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_size(n: int) -> str:
    for suffix, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{suffix}"
    return f"{n}B"
