"""The target side of the iSCSI login phase (RFC 7143, 6.3 and 7): a sans-IO state machine.

``LoginMachine.handle`` takes one Login Request PDU and returns the Login Response to
send.  When ``outcome`` becomes ``SUCCESS`` the connection enters the full feature phase
with ``params``; when it becomes ``FAILED`` the connection is closed after the response.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from cairn.iscsi import params as P
from cairn.iscsi.chap import ChapConfig, ChapError, ChapExchange
from cairn.iscsi.pdu import LoginStatus, Op, Pdu, Stage, build_bhs
from cairn.iscsi.targets import TargetDirectory, TargetSpec
from cairn.iscsi.text import TextError, encode_text, parse_text

log = logging.getLogger("cairn.iscsi.login")

CMD_WINDOW = 128  # how many commands an initiator may have outstanding

_SESSION_KEYS = {"InitiatorName", "InitiatorAlias", "TargetName", "SessionType"}
_TARGET_ONLY_KEYS = {"TargetAddress", "TargetPortalGroupTag", "TargetAlias"}


class Outcome(Enum):
    IN_PROGRESS = "in-progress"
    SUCCESS = "success"
    FAILED = "failed"


class SessionTable(Protocol):
    def new_tsih(self) -> int: ...

    def has_tsih(self, tsih: int) -> bool: ...


@dataclass
class LoginFailure(Exception):
    status: LoginStatus
    reason: str


@dataclass
class LoginMachine:
    directory: TargetDirectory
    sessions: SessionTable
    peer_address: str | None = None

    outcome: Outcome = Outcome.IN_PROGRESS
    params: P.SessionParams = field(default_factory=P.SessionParams)
    initiator_name: str = ""
    initiator_alias: str = ""
    target: TargetSpec | None = None
    discovery: bool = False
    isid: bytes = b""
    tsih: int = 0
    cid: int = 0
    itt: int = 0
    cmdsn: int = 0  # ExpCmdSN at the start of the full feature phase
    statsn: int = 0  # the StatSN carried by login responses
    failure: str = ""

    _stage: Stage | None = None
    _pending_text: bytearray = field(default_factory=bytearray)
    _seen_keys: set[str] = field(default_factory=set)
    _auth_method: str | None = None  # "CHAP" or "None" once agreed
    _chap: ChapExchange | None = None
    _chap_state: str = "idle"  # idle -> challenged -> done
    _declared: bool = False

    # --- public -------------------------------------------------------------------
    def handle(self, pdu: Pdu) -> list[bytes]:
        """Process one Login Request; return the buffers of the Login Response."""
        try:
            return self._handle(pdu)
        except LoginFailure as f:
            self.outcome = Outcome.FAILED
            self.failure = f.reason
            log.warning(
                "event=login_refused initiator=%s peer=%s target=%s status=0x%04x reason=%r",
                self.initiator_name or "-",
                self.peer_address or "-",
                self.target.iqn if self.target else "-",
                f.status,
                f.reason,
            )
            return [self._response(pdu, f.status, transit=False, csg=0, nsg=0, data=b"")]

    # --- internals ----------------------------------------------------------------
    def _handle(self, pdu: Pdu) -> list[bytes]:
        if pdu.opcode != Op.LOGIN_REQ:
            raise LoginFailure(
                LoginStatus.INVALID_DURING_LOGIN, f"opcode 0x{pdu.opcode:02x} during login"
            )
        bhs = pdu.bhs
        transit = bool(bhs[1] & 0x80)
        cont = bool(bhs[1] & 0x40)
        csg = (bhs[1] >> 2) & 3
        nsg = bhs[1] & 3
        version_max, version_min = bhs[2], bhs[3]
        isid = bytes(bhs[8:14])
        (tsih,) = struct.unpack_from(">H", bhs, 14)
        (cid,) = struct.unpack_from(">H", bhs, 20)
        (cmdsn, exp_statsn) = struct.unpack_from(">II", bhs, 24)

        if self._stage is None:  # first PDU of the login
            if version_min > 0:
                raise LoginFailure(
                    LoginStatus.UNSUPPORTED_VERSION, f"version-min {version_min} > 0"
                )
            del version_max
            self.isid, self.tsih, self.cid = isid, tsih, cid
            self.itt = pdu.itt
            self.cmdsn = cmdsn
            self.statsn = exp_statsn
            if csg not in (Stage.SECURITY, Stage.OPERATIONAL):
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, f"login starts in stage {csg}")
            self._stage = Stage(csg)
        else:
            if isid != self.isid or tsih != self.tsih or cid != self.cid:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, "ISID, TSIH or CID changed")
            if csg != self._stage:
                raise LoginFailure(
                    LoginStatus.INITIATOR_ERROR,
                    f"CSG {csg} but the login is in stage {int(self._stage)}",
                )
        if transit and cont:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "T and C bits both set")
        if transit and (nsg == 2 or nsg <= csg):
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, f"bad transition {csg}->{nsg}")

        self._pending_text += pdu.data
        if len(self._pending_text) > 65536:
            raise LoginFailure(LoginStatus.OUT_OF_RESOURCES, "login text too long")
        if cont:  # more text follows: answer with an empty response
            return [self._response(pdu, LoginStatus.SUCCESS, False, csg, 0, b"")]
        try:
            pairs = parse_text(self._pending_text)
        except TextError as e:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, str(e)) from e
        self._pending_text = bytearray()
        for key, _ in pairs:
            if key in self._seen_keys and not key.startswith("CHAP_"):
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, f"key {key} sent twice")
            self._seen_keys.add(key)

        keys = dict(pairs)
        answer: list[tuple[str, str]] = []
        if self.target is None and not self.discovery:
            answer += self._session_keys(keys)
        ready = True
        if csg == Stage.SECURITY:
            ready = self._security(keys, answer)
        elif self._auth_required():
            raise LoginFailure(
                LoginStatus.AUTH_FAILURE,
                "authentication is required but the security stage was skipped",
            )
        answer += self._operational(pairs, csg)

        if transit and ready:
            if nsg == Stage.FULL_FEATURE and not self._declared:
                # make sure our limits are known even if the operational stage was skipped
                answer.append(("MaxRecvDataSegmentLength", str(self.params.max_recv_dsl_target)))
                self._declared = True
            self._stage = Stage(nsg)
            if nsg == Stage.FULL_FEATURE:
                P.finish(self.params)
                if self.tsih == 0:
                    self.tsih = self.sessions.new_tsih()
                self.outcome = Outcome.SUCCESS
            return [self._response(pdu, LoginStatus.SUCCESS, True, csg, nsg, encode_text(answer))]
        return [self._response(pdu, LoginStatus.SUCCESS, False, csg, 0, encode_text(answer))]

    def _session_keys(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        name = keys.get("InitiatorName")
        if not name:
            raise LoginFailure(LoginStatus.MISSING_PARAMETER, "InitiatorName missing")
        self.initiator_name = name
        self.initiator_alias = keys.get("InitiatorAlias", "")
        stype = keys.get("SessionType", "Normal")
        if stype not in ("Normal", "Discovery"):
            raise LoginFailure(LoginStatus.SESSION_TYPE_NOT_SUPPORTED, f"SessionType {stype}")
        if self.tsih != 0:
            if not self.sessions.has_tsih(self.tsih):
                raise LoginFailure(
                    LoginStatus.SESSION_DOES_NOT_EXIST, f"no session with TSIH {self.tsih}"
                )
            raise LoginFailure(
                LoginStatus.TOO_MANY_CONNECTIONS, "one connection per session (MaxConnections=1)"
            )
        if stype == "Discovery":
            self.discovery = True
            return []
        target_name = keys.get("TargetName")
        if not target_name:
            raise LoginFailure(LoginStatus.MISSING_PARAMETER, "TargetName missing")
        spec = self.directory.lookup(target_name)
        if spec is None:
            raise LoginFailure(LoginStatus.NOT_FOUND, f"no target {target_name}")
        self.target = spec
        if not spec.acl.admits(name, self.peer_address):
            raise LoginFailure(
                LoginStatus.AUTHORIZATION_FAILURE,
                f"initiator {name} from {self.peer_address} is not in the ACL",
            )
        busy = self.directory.unavailable(spec.iqn)
        if busy is not None:  # the initiator tries again later (RFC 7143 11.13.5)
            raise LoginFailure(LoginStatus.SERVICE_UNAVAILABLE, f"{spec.iqn}: {busy}")
        out = [("TargetPortalGroupTag", str(spec.tpgt))]
        if spec.alias:
            out.append(("TargetAlias", spec.alias))
        return out

    def _chap_config(self) -> ChapConfig | None:
        if self.discovery:
            return self.directory.discovery_chap
        return self.target.chap if self.target else None

    def _auth_required(self) -> bool:
        return self._chap_config() is not None and self._chap_state != "done"

    def _security(self, keys: dict[str, str], answer: list[tuple[str, str]]) -> bool:
        """Run the security stage; True when it is complete."""
        config = self._chap_config()
        if "AuthMethod" in keys:
            offered = [v.strip() for v in keys["AuthMethod"].split(",")]
            if config is not None:
                if "CHAP" not in offered:
                    answer.append(("AuthMethod", "Reject"))
                    raise LoginFailure(
                        LoginStatus.AUTH_FAILURE, f"CHAP required, initiator offered {offered}"
                    )
                self._auth_method = "CHAP"
            else:
                if "None" not in offered:
                    raise LoginFailure(
                        LoginStatus.AUTH_FAILURE, f"no common AuthMethod in {offered}"
                    )
                self._auth_method = "None"
            answer.append(("AuthMethod", self._auth_method))
            return config is None
        if config is None:
            return True
        if self._auth_method != "CHAP":
            raise LoginFailure(LoginStatus.AUTH_FAILURE, "CHAP required, AuthMethod not offered")
        try:
            if self._chap_state == "idle":
                if "CHAP_A" not in keys:
                    return False
                self._chap = ChapExchange(config)
                answer += self._chap.start(keys["CHAP_A"])
                self._chap_state = "challenged"
                return False
            if self._chap_state == "challenged":
                assert self._chap is not None
                answer += self._chap.verify(keys)
                self._chap_state = "done"
                log.info(
                    "event=chap_ok initiator=%s peer=%s", self.initiator_name, self.peer_address
                )
                return True
        except ChapError as e:
            raise LoginFailure(LoginStatus.AUTH_FAILURE, str(e)) from e
        return self._chap_state == "done"

    def _operational(self, pairs: list[tuple[str, str]], csg: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for key, value in pairs:
            if key in _SESSION_KEYS or key == "AuthMethod" or key.startswith("CHAP_"):
                continue
            if key in P.KEYS:
                reply = P.negotiate_key(self.params, key, value)
                if reply is not None:
                    out.append((key, reply))
                    if key == "MaxRecvDataSegmentLength":
                        self._declared = True  # answered Reject: ours stays the default
                elif key == "MaxRecvDataSegmentLength" and not self._declared:
                    out.append(("MaxRecvDataSegmentLength", str(self.params.max_recv_dsl_target)))
                    self._declared = True
            elif key in P.MARKER_KEYS:
                out.append((key, "No"))
            elif key in P.MARKER_INT_KEYS:
                out.append((key, "Irrelevant"))
            elif key == "iSCSIProtocolLevel":
                try:
                    level = min(int(value), 1)
                except ValueError:
                    out.append((key, "Reject"))
                else:
                    out.append((key, str(max(level, 0))))
            elif key in _TARGET_ONLY_KEYS or key == "SendTargets":
                out.append((key, "Irrelevant"))
            else:
                out.append((key, "NotUnderstood"))
        if csg == Stage.OPERATIONAL and not self._declared:
            out.append(("MaxRecvDataSegmentLength", str(self.params.max_recv_dsl_target)))
            self._declared = True
        return out

    def _response(
        self, pdu: Pdu, status: LoginStatus, transit: bool, csg: int, nsg: int, data: bytes
    ) -> bytes:
        flags = (0x80 if transit else 0) | (csg << 2) | (nsg if transit else 0)
        tsih = self.tsih if status == LoginStatus.SUCCESS else 0
        exp = self.cmdsn
        rest = struct.pack(
            ">IIIIBBH8x", 0, self.statsn, exp, exp + CMD_WINDOW - 1, status >> 8, status & 0xFF, 0
        )
        isid_tsih = (self.isid or bytes(pdu.bhs[8:14])) + struct.pack(">H", tsih)
        bhs = build_bhs(Op.LOGIN_RSP, flags, 0, 0, len(data), isid_tsih, pdu.itt, rest)
        return bhs + data + bytes((-len(data)) & 3)
