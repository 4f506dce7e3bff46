"""Reservations of one logical unit: RESERVE/RELEASE (SPC-2) and PERSISTENT RESERVE
(SPC-4 5.9, 6.15, 6.16).

Registrations are kept per I_T nexus and survive the loss of that nexus (not a restart
of the target: APTPL is not offered).  The SPC-2 reservation is released when its
nexus goes away or the logical unit is reset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .common import Nexus
from .constants import (
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
    REGISTRATIONS_PREEMPTED,
    RESERVATIONS_PREEMPTED,
    RESERVATIONS_RELEASED,
    Asc,
    PrIn,
    PrOut,
    PrType,
    SenseKey,
)
from .sense import (
    ReservationConflict,
    ScsiError,
    invalid_cdb,
    invalid_param,
    param_length_error,
)

ACCESS_ANY = 0
ACCESS_READ = 1
ACCESS_WRITE = 2

SCOPE_LU = 0

_VALID_TYPES = frozenset(int(t) for t in PrType)
_ALL_REGISTRANTS = frozenset(
    {int(PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS), int(PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)}
)
_REGISTRANTS = (
    frozenset(
        {
            int(PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY),
            int(PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY),
        }
    )
    | _ALL_REGISTRANTS
)
_WRITE_ONLY = frozenset(
    {
        int(PrType.WRITE_EXCLUSIVE),
        int(PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY),
        int(PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS),
    }
)

# PERSISTENT RESERVE IN / REPORT CAPABILITIES: the type mask (WR_EX_AR, EX_AC_RO,
# WR_EX_RO, EX_AC, WR_EX in byte 4; EX_AC_AR in byte 5).
_TYPE_MASK = 0xEA01

# A unit attention to establish: (nexus, additional sense).
UnitAttention = tuple[Nexus, Asc]


@dataclass
class Reservations:
    spc2_holder: Nexus | None = None
    registrations: dict[Nexus, int] = field(default_factory=dict)
    pr_holder: Nexus | None = None  # None with an all-registrants reservation
    pr_type: int | None = None
    generation: int = 0

    # ------------------------------------------------------------------ checks
    @property
    def active(self) -> bool:
        """True when any command may conflict (an SPC-2 or a persistent reservation)."""
        return self.spc2_holder is not None or self.pr_type is not None

    def conflicts(self, nexus: Nexus, access: int, spc2_exempt: bool) -> bool:
        holder = self.spc2_holder
        if holder is not None:
            return holder != nexus and not spc2_exempt
        if access == ACCESS_ANY or self.pr_type is None:
            return False
        return self._pr_blocks(nexus, access)

    def _pr_blocks(self, nexus: Nexus, access: int) -> bool:
        t = self.pr_type
        assert t is not None
        if t in _REGISTRANTS:
            if nexus in self.registrations:
                return False
        elif self.pr_holder == nexus:
            return False
        return access == ACCESS_WRITE or t not in _WRITE_ONLY

    def is_holder(self, nexus: Nexus) -> bool:
        if self.pr_type is None:
            return False
        if self.pr_type in _ALL_REGISTRANTS:
            return nexus in self.registrations
        return self.pr_holder == nexus

    # ------------------------------------------------------------------ SPC-2
    def reserve6(self, nexus: Nexus) -> None:
        if self.registrations or self.pr_type is not None:
            raise ReservationConflict
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            raise ReservationConflict
        self.spc2_holder = nexus

    def release6(self, nexus: Nexus) -> None:
        if self.registrations or self.pr_type is not None:
            raise ReservationConflict
        if self.spc2_holder == nexus:
            self.spc2_holder = None

    def nexus_lost(self, nexus: Nexus) -> None:
        if self.spc2_holder == nexus:
            self.spc2_holder = None

    def reset(self) -> None:
        """LOGICAL UNIT RESET: the SPC-2 reservation goes, persistent ones stay."""
        self.spc2_holder = None

    # ------------------------------------------------------------------ PR IN
    def persistent_reserve_in(self, service_action: int) -> bytes:
        if service_action == PrIn.READ_KEYS:
            keys = b"".join(struct.pack(">Q", k) for k in self.registrations.values())
            return struct.pack(">II", self.generation, len(keys)) + keys
        if service_action == PrIn.READ_RESERVATION:
            if self.pr_type is None:
                return struct.pack(">II", self.generation, 0)
            key = self._reservation_key()
            return struct.pack(
                ">IIQ4xxB2x", self.generation, 16, key, (SCOPE_LU << 4) | self.pr_type
            )
        if service_action == PrIn.REPORT_CAPABILITIES:
            # No CRH, SIP_C, ATP_C or PTPL_C; TMV with the mask of supported types.
            return struct.pack(">HBBH2x", 8, 0x00, 0x80, _TYPE_MASK)
        if service_action == PrIn.READ_FULL_STATUS:
            return self._read_full_status()
        raise invalid_cdb(1, 4)

    def _reservation_key(self) -> int:
        if self.pr_type in _ALL_REGISTRANTS or self.pr_holder is None:
            return 0
        return self.registrations.get(self.pr_holder, 0)

    def _read_full_status(self) -> bytes:
        body = bytearray()
        for nexus, key in self.registrations.items():
            holder = self.is_holder(nexus)
            tid = transport_id(nexus.initiator_port)
            body += struct.pack(
                ">Q4xBB4xHI",
                key,
                0x01 if holder else 0x00,
                ((SCOPE_LU << 4) | (self.pr_type or 0)) if holder else 0,
                nexus.relative_target_port & 0xFFFF,
                len(tid),
            )
            body += tid
        return struct.pack(">II", self.generation, len(body)) + bytes(body)

    # ------------------------------------------------------------------ PR OUT
    def persistent_reserve_out(
        self, nexus: Nexus, cdb: bytes, params: bytes
    ) -> list[UnitAttention]:
        """Run one PERSISTENT RESERVE OUT; return the unit attentions it causes."""
        sa = cdb[1] & 0x1F
        scope = cdb[2] >> 4
        ptype = cdb[2] & 0x0F
        if sa == PrOut.REGISTER_AND_MOVE or sa > PrOut.REGISTER_AND_MOVE:
            raise invalid_cdb(1, 4)
        plen = struct.unpack_from(">I", cdb, 5)[0]
        if plen != 24 or len(params) < 24:
            raise param_length_error()
        rkey, sakey = struct.unpack_from(">QQ", params, 0)
        flags = params[20]
        if flags & 0x08:  # SPEC_I_PT
            raise invalid_param(20, 3)
        if flags & 0x04:  # ALL_TG_PT
            raise invalid_param(20, 2)
        if flags & 0x01:  # APTPL: persistence through power loss is not offered
            raise invalid_param(20, 0)
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            raise ReservationConflict
        if sa == PrOut.REGISTER_AND_IGNORE:
            return self._register(nexus, sakey)
        registered = self.registrations.get(nexus)
        if sa == PrOut.REGISTER:
            if registered is None:
                if rkey != 0:
                    raise ReservationConflict
            elif rkey != registered:
                raise ReservationConflict
            return self._register(nexus, sakey)
        if registered is None or rkey != registered:
            raise ReservationConflict
        if sa == PrOut.RESERVE:
            self._check_scope_type(scope, ptype)
            self._reserve(nexus, ptype)
            return []
        if sa == PrOut.RELEASE:
            return self._release(nexus, scope, ptype)
        if sa == PrOut.CLEAR:
            return self._clear(nexus)
        return self._preempt(nexus, sakey, scope, ptype)

    @staticmethod
    def _check_scope_type(scope: int, ptype: int) -> None:
        if scope != SCOPE_LU:
            raise invalid_cdb(2, 7)
        if ptype not in _VALID_TYPES:
            raise invalid_cdb(2, 3)

    def _matching(self, nexus: Nexus, sakey: int) -> list[Nexus]:
        """Registrations holding ``sakey`` other than ``nexus``'s own; none at all
        holding it is a reservation conflict."""
        matched = [n for n, k in self.registrations.items() if k == sakey]
        if not matched:
            raise ReservationConflict
        return [n for n in matched if n != nexus]

    def _bump(self) -> None:
        self.generation = (self.generation + 1) & 0xFFFFFFFF

    def _register(self, nexus: Nexus, sakey: int) -> list[UnitAttention]:
        if sakey == 0:
            if nexus not in self.registrations:
                return []
            self._bump()
            return self._unregister(nexus)
        self.registrations[nexus] = sakey
        self._bump()
        return []

    def _unregister(self, nexus: Nexus) -> list[UnitAttention]:
        del self.registrations[nexus]
        if self.pr_type is None:
            return []
        if self.pr_type in _ALL_REGISTRANTS:
            if not self.registrations:
                self._drop_reservation()
            return []
        if self.pr_holder != nexus:
            return []
        released_type = self.pr_type
        self._drop_reservation()
        if released_type in _REGISTRANTS:
            return [(n, RESERVATIONS_RELEASED) for n in self.registrations]
        return []

    def _drop_reservation(self) -> None:
        self.pr_type = None
        self.pr_holder = None

    def _reserve(self, nexus: Nexus, ptype: int) -> None:
        if self.pr_type is None:
            self.pr_type = ptype
            self.pr_holder = None if ptype in _ALL_REGISTRANTS else nexus
            return
        if not self.is_holder(nexus) or self.pr_type != ptype:
            raise ReservationConflict

    def _release(self, nexus: Nexus, scope: int, ptype: int) -> list[UnitAttention]:
        if self.pr_type is None or not self.is_holder(nexus):
            return []
        if scope != SCOPE_LU or ptype != self.pr_type:
            raise ScsiError(SenseKey.ILLEGAL_REQUEST, INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
        released_type = self.pr_type
        self._drop_reservation()
        if released_type in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS):
            return []
        return [(n, RESERVATIONS_RELEASED) for n in self.registrations if n != nexus]

    def _clear(self, nexus: Nexus) -> list[UnitAttention]:
        others = [n for n in self.registrations if n != nexus]
        self.registrations.clear()
        self._drop_reservation()
        self._bump()
        return [(n, RESERVATIONS_PREEMPTED) for n in others]

    def _preempt(self, nexus: Nexus, sakey: int, scope: int, ptype: int) -> list[UnitAttention]:
        uas: list[UnitAttention] = []
        if self.pr_type is None or (
            self.pr_type not in _ALL_REGISTRANTS and sakey != self._reservation_key()
        ):
            # Only registrations go: those holding the key named.
            if sakey == 0:
                raise invalid_param(8)
            victims = self._matching(nexus, sakey)
            for v in victims:
                uas.append((v, REGISTRATIONS_PREEMPTED))
                uas += self._unregister(v)
            self._bump()
            return uas
        if self.pr_type in _ALL_REGISTRANTS and sakey != 0:
            # All-registrants reservation, a key named: only those registrations go.
            for v in self._matching(nexus, sakey):
                del self.registrations[v]
                uas.append((v, REGISTRATIONS_PREEMPTED))
            if not self.registrations:
                self._drop_reservation()
            self._bump()
            return uas
        # The reservation itself is preempted and taken over by this nexus.
        self._check_scope_type(scope, ptype)
        if self.pr_type in _ALL_REGISTRANTS:
            victims = [n for n in self.registrations if n != nexus]
        else:
            victims = [n for n, k in self.registrations.items() if k == sakey and n != nexus]
        old_type = self.pr_type
        for v in victims:
            del self.registrations[v]
            uas.append((v, REGISTRATIONS_PREEMPTED))
        self.pr_type = ptype
        self.pr_holder = None if ptype in _ALL_REGISTRANTS else nexus
        if old_type != ptype:
            gone = {v for v, _ in uas}
            uas += [
                (n, RESERVATIONS_RELEASED)
                for n in self.registrations
                if n != nexus and n not in gone
            ]
        self._bump()
        return uas


def transport_id(initiator_port: str) -> bytes:
    """An iSCSI TransportID (SPC-4 7.6.4.6) for an initiator port."""
    if ",i,0x" in initiator_port:
        fmt = 0x40  # iSCSI name, separator and ISID
        name = initiator_port
    else:
        fmt = 0x00
        name = initiator_port
    raw = name.encode("utf-8")[:223] + b"\0"
    raw += b"\0" * (-len(raw) % 4)
    if len(raw) < 20:
        raw += b"\0" * (20 - len(raw))
    return bytes((fmt | 0x05, 0)) + struct.pack(">H", len(raw)) + raw
