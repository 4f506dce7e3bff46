"""Operational parameters of a session and how each key is negotiated (RFC 7143, 13)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cairn.iscsi.text import parse_number

# What this target offers or accepts at most.  256 KiB data segments and immediate,
# unsolicited data keep the number of PDUs and round trips per command low.
TARGET_MAX_RECV_DSL = 262144
TARGET_MAX_BURST = 16776192
TARGET_FIRST_BURST = 16776192
TARGET_MAX_OUTSTANDING_R2T = 16


@dataclass
class SessionParams:
    header_digest: bool = False
    data_digest: bool = False
    max_recv_dsl_initiator: int = 8192  # the longest data segment we may send
    max_recv_dsl_target: int = TARGET_MAX_RECV_DSL  # the longest we accept
    max_burst: int = 262144
    first_burst: int = 65536
    immediate_data: bool = True
    initial_r2t: bool = True
    max_outstanding_r2t: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 20
    error_recovery_level: int = 0
    max_connections: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True


class Rule(Enum):
    AND = "and"
    OR = "or"
    MIN = "min"
    MAX = "max"
    DIGEST = "digest"
    DECLARE = "declare"  # the initiator declares; the target records, no answer needed


@dataclass(frozen=True)
class KeySpec:
    attr: str
    rule: Rule
    ours: int | bool | None = None
    low: int = 0
    high: int = 0


KEYS: dict[str, KeySpec] = {
    "HeaderDigest": KeySpec("header_digest", Rule.DIGEST),
    "DataDigest": KeySpec("data_digest", Rule.DIGEST),
    "MaxConnections": KeySpec("max_connections", Rule.MIN, 1, 1, 65535),
    "InitialR2T": KeySpec("initial_r2t", Rule.OR, False),
    "ImmediateData": KeySpec("immediate_data", Rule.AND, True),
    "MaxRecvDataSegmentLength": KeySpec(
        "max_recv_dsl_initiator", Rule.DECLARE, None, 512, 16777215
    ),
    "MaxBurstLength": KeySpec("max_burst", Rule.MIN, TARGET_MAX_BURST, 512, 16777215),
    "FirstBurstLength": KeySpec("first_burst", Rule.MIN, TARGET_FIRST_BURST, 512, 16777215),
    "DefaultTime2Wait": KeySpec("default_time2wait", Rule.MAX, 2, 0, 3600),
    "DefaultTime2Retain": KeySpec("default_time2retain", Rule.MIN, 20, 0, 3600),
    "MaxOutstandingR2T": KeySpec(
        "max_outstanding_r2t", Rule.MIN, TARGET_MAX_OUTSTANDING_R2T, 1, 65535
    ),
    "DataPDUInOrder": KeySpec("data_pdu_in_order", Rule.OR, True),
    "DataSequenceInOrder": KeySpec("data_sequence_in_order", Rule.OR, True),
    "ErrorRecoveryLevel": KeySpec("error_recovery_level", Rule.MIN, 0, 0, 2),
}

# Keys from RFC 3720 that RFC 7143 made obsolete, and RFC 7144 keys we answer plainly.
MARKER_KEYS = {"IFMarker", "OFMarker"}
MARKER_INT_KEYS = {"IFMarkInt", "OFMarkInt"}


def _bool(value: str) -> bool:
    if value == "Yes":
        return True
    if value == "No":
        return False
    raise ValueError(value)


def negotiate_key(params: SessionParams, key: str, value: str) -> str | None:
    """Apply one operational key; return the answer value (None: no answer needed).

    An invalid value is answered with ``Reject`` and leaves the default in place.
    """
    spec = KEYS[key]
    try:
        if spec.rule is Rule.DIGEST:
            offered = [v.strip() for v in value.split(",")]
            for v in offered:
                if v in ("None", "CRC32C"):
                    setattr(params, spec.attr, v == "CRC32C")
                    return v
            return "Reject"
        if spec.rule in (Rule.AND, Rule.OR):
            theirs = _bool(value)
            result = (
                (theirs and bool(spec.ours))
                if spec.rule is Rule.AND
                else (theirs or bool(spec.ours))
            )
            setattr(params, spec.attr, result)
            return "Yes" if result else "No"
        number = parse_number(value)
        if not spec.low <= number <= spec.high:
            return "Reject"
        if spec.rule is Rule.DECLARE:
            setattr(params, spec.attr, number)
            return None
        assert isinstance(spec.ours, int)
        result_n = min(number, spec.ours) if spec.rule is Rule.MIN else max(number, spec.ours)
        setattr(params, spec.attr, result_n)
        return str(result_n)
    except ValueError:
        return "Reject"


def finish(params: SessionParams) -> None:
    """Enforce relations between keys once negotiation is over."""
    if params.first_burst > params.max_burst:
        params.first_burst = params.max_burst
