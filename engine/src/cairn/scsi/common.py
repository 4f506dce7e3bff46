"""The types the iSCSI layer exchanges with the SCSI layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..blockdev import Extent, Pending


@dataclass(frozen=True, slots=True)
class Nexus:
    """An I_T nexus: one initiator port (iSCSI name + ISID) talking to one target port."""

    initiator_port: str
    target_port: str
    relative_target_port: int = 1
    # Nexuses are looked up on every command: hash once.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        key = (self.initiator_port, self.target_port, self.relative_target_port)
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:
        return self._hash


@dataclass(slots=True)
class ScsiResult:
    """What a command produced.

    ``data`` is the data-in: bytes, a memoryview, or for READ a list of
    ``blockdev.Extent`` to send without copying.  ``flush`` asks the caller to run
    ``device.flush()`` (in a thread) before it sends the status.  ``pending`` (from
    an asynchronous device) means the command is still running: its value, once done,
    is the ScsiResult to send (it never fails; errors are turned into a status).
    """

    status: int
    sense: bytes = b""
    data: bytes | memoryview | list[Extent] | None = None
    flush: bool = False
    pending: Pending | None = None
