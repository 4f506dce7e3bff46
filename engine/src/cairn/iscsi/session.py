"""Sessions of one portal: TSIH allocation, reinstatement and the SCSI back end contract."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class ScsiBackend(Protocol):
    """The SCSI layer as one iSCSI target sees it (``cairn.scsi.ScsiTarget``)."""

    def execute(self, lun: int, cdb: bytes, data_out: Any, nexus: Any) -> Any: ...

    def data_out_length(self, lun: int, cdb: bytes) -> int | None: ...

    def nexus_added(self, nexus: Any) -> None: ...

    def nexus_lost(self, nexus: Any) -> None: ...

    def lun_reset(self, lun: int, nexus: Any) -> None: ...

    def target_reset(self, nexus: Any) -> None: ...

    def fit_to_transfer(self, lun: int, cdb: bytes, edtl: int) -> Any:
        """The CDB to run when ``edtl`` differs from what the CDB transfers (bytes), or
        the result that ends the command instead."""
        ...

    def has_lun(self, lun: int) -> bool: ...

    def flush(self, lun: int) -> None:
        """Make completed writes of ``lun`` durable; called from a worker thread."""
        ...


@dataclass(eq=False)
class SessionRecord:
    tsih: int
    initiator_name: str
    isid: bytes
    target_iqn: str | None
    close: Callable[[str], None]  # closes the session's connection, with a reason


@dataclass
class SessionTable:
    """All sessions on one portal process."""

    _tsihs: Any = field(default_factory=lambda: itertools.count(1))
    by_tsih: dict[int, SessionRecord] = field(default_factory=dict)

    def new_tsih(self) -> int:
        while True:
            tsih = next(self._tsihs) & 0xFFFF
            if tsih and tsih not in self.by_tsih:
                return tsih

    def has_tsih(self, tsih: int) -> bool:
        return tsih in self.by_tsih

    def add(self, record: SessionRecord) -> None:
        """Register a new session, ending an older one with the same initiator port
        (session reinstatement, RFC 7143 6.3.5)."""
        if record.target_iqn is not None:
            for old in list(self.by_tsih.values()):
                if (
                    old.initiator_name == record.initiator_name
                    and old.isid == record.isid
                    and old.target_iqn == record.target_iqn
                ):
                    self.remove(old)
                    old.close("session reinstated by a new login")
        self.by_tsih[record.tsih] = record

    def remove(self, record: SessionRecord) -> None:
        if self.by_tsih.get(record.tsih) is record:
            del self.by_tsih[record.tsih]

    def close_all(self, reason: str) -> None:
        for rec in list(self.by_tsih.values()):
            self.remove(rec)
            rec.close(reason)
