"""Rules for names and quantities, shared by the API and the CLI (stdlib only)."""

from __future__ import annotations

import datetime as dt
import re

from ncloud.errors import InvalidInput

NAME_RULE = "1-64 characters: letters, digits, '-', '_' or '.', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def check_name(value: str, what: str = "name") -> str:
    """Return value if it is a valid object name, else raise InvalidInput naming the rule."""
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise InvalidInput(f"{what} {value!r} is invalid: {NAME_RULE}")
    return value


def check_email(value: str) -> str:
    if not isinstance(value, str) or _EMAIL.fullmatch(value) is None:
        raise InvalidInput(f"user {value!r} is invalid: an email address like ada@example.com")
    return value.lower()


def parse_since(value: str) -> dt.datetime:
    """An ISO date or date-time (2026-12-01, 2026-12-01T08:00), as naive UTC."""
    try:
        found = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"since must be an ISO date or time like 2026-12-01 or 2026-12-01T08:00, not {value!r}"
        ) from None
    if found.tzinfo is not None:
        found = found.astimezone(dt.UTC).replace(tzinfo=None)
    return found


def parse_size(value: str | int) -> int:
    """Bytes from '4GiB', '512MiB', '2G' or a plain number of bytes."""
    if isinstance(value, bool):
        raise InvalidInput(f"size {value!r} is not a size")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = _SIZE.fullmatch(str(value))
        if match is None:
            raise InvalidInput(f"size {value!r} is not a size like 4GiB, 512MiB or 1000000")
        number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise InvalidInput(f"size {value!r} has an unknown unit {unit!r}; use B, KiB, MiB, GiB")
    if number < 0:
        raise InvalidInput(f"size {value!r} is negative")
    return int(number * _UNITS[unit])


def format_size(n: float) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{int(n)}B"


def check_resources(cpus: float, gpus: float, memory: int) -> None:
    """A reservation needs at least one CPU and no negative amounts."""
    for label, amount in (("cpus", cpus), ("gpus", gpus), ("memory", memory)):
        if amount < 0:
            raise InvalidInput(f"{label} must not be negative (got {amount})")
    if cpus < 1:
        raise InvalidInput(f"cpus must be at least 1 (got {cpus})")
    if gpus != int(gpus):
        raise InvalidInput(f"gpus must be a whole number (got {gpus})")
    if cpus != int(cpus):
        raise InvalidInput(f"cpus must be a whole number (got {cpus})")


def parse_mount(text: str) -> dict[str, int | str]:
    """-v 7 or -v 9:/vocab -> {"id": 9, "path": "/vocab"} (the server checks the path)."""
    volume, _, path = text.partition(":")
    if not volume.strip().isdigit():
        raise InvalidInput(f"volume {text!r}: give ID or ID:PATH, e.g. -v 7 or -v 9:/vocab")
    return {"id": int(volume), "path": path or "/data"}
