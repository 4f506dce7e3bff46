"""Store errors.  All derive from ``cairn.blockdev.StoreError`` so that one ``except``
at a boundary catches them; the subclasses let that boundary pick a precise answer
(an HTTP status, a SCSI sense)."""

from __future__ import annotations

from cairn.blockdev import MediumError, NoSpaceError, StoreError


class NotFoundError(StoreError):
    """No volume or snapshot of that name."""


class ExistsError(StoreError):
    """A volume or snapshot of that name exists already."""


class BusyError(StoreError):
    """The object is in use: open elsewhere, or other objects depend on it."""


class OutOfRangeError(StoreError, ValueError):
    """A request outside the volume, not made of whole blocks, or with a bad seq."""


__all__ = [
    "BusyError",
    "ExistsError",
    "MediumError",
    "NoSpaceError",
    "NotFoundError",
    "OutOfRangeError",
    "StoreError",
]
