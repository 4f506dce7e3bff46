"""Login, negotiation, CHAP and ACLs, driven without sockets."""

from __future__ import annotations

import pytest

from cairn.iscsi.chap import ChapConfig, chap_response, load_chap_file
from cairn.iscsi.connection import Connection
from cairn.iscsi.pdu import LoginStatus, Op
from cairn.iscsi.session import SessionTable
from cairn.iscsi.targets import Acl
from cairn.iscsi.text import TextError, decode_binary, parse_text

from .iscsi_helpers import (
    INITIATOR,
    TARGET,
    FakeBackend,
    chap_login,
    feed,
    login_pdu,
    make_connection,
    plain_login,
)

CHAP = ChapConfig("alice", b"correct horse battery")
MUTUAL = ChapConfig("alice", b"correct horse battery", "target1", b"target secret 123")


def test_plain_login_enters_full_feature_and_negotiates():
    conn, backend = make_connection()
    rsp = plain_login(
        conn,
        [
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "2097152"),
            ("MaxOutstandingR2T", "4"),
            ("ErrorRecoveryLevel", "2"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "60"),
            ("X-com.example.private", "1"),
            ("OFMarker", "No"),
        ],
    )
    assert rsp.opcode == Op.LOGIN_RSP
    assert rsp.login_status == 0
    assert rsp.bhs[1] & 0x80 and rsp.bhs[1] & 3 == 3
    keys = rsp.keys
    assert keys["HeaderDigest"] == "CRC32C"
    assert keys["DataDigest"] == "None"
    assert keys["ImmediateData"] == "Yes"
    assert keys["InitialR2T"] == "No"
    assert keys["MaxBurstLength"] == "1048576"
    assert keys["ErrorRecoveryLevel"] == "0"
    assert keys["DefaultTime2Wait"] == "2"
    assert keys["DefaultTime2Retain"] == "20"
    assert keys["X-com.example.private"] == "NotUnderstood"
    assert keys["OFMarker"] == "No"
    assert keys["TargetPortalGroupTag"] == "1"
    assert int(keys["MaxRecvDataSegmentLength"]) >= 8192
    assert conn.full_feature and conn.hd == 4
    # FirstBurstLength never exceeds MaxBurstLength
    assert conn.params.first_burst <= conn.params.max_burst
    assert conn.params.max_recv_dsl_initiator == 262144
    assert len(backend.nexuses) == 1


@pytest.mark.parametrize(
    "key,value",
    [
        ("MaxBurstLength", "100"),
        ("MaxBurstLength", "abc"),
        ("MaxRecvDataSegmentLength", "1"),
        ("ImmediateData", "Maybe"),
        ("HeaderDigest", "MD5"),
        ("ErrorRecoveryLevel", "7"),
        ("MaxOutstandingR2T", "0"),
        ("DefaultTime2Wait", "99999"),
    ],
)
def test_bad_values_are_rejected_and_defaults_kept(key, value):
    conn, _ = make_connection()
    rsp = plain_login(conn, [(key, value)])
    assert rsp.login_status == 0
    assert rsp.keys[key] == "Reject"


def test_duplicate_key_fails_login():
    conn, _ = make_connection()
    data = login_pdu([("InitiatorName", INITIATOR), ("TargetName", TARGET)])
    # hand-craft a duplicate key
    raw = bytearray(data[:48])
    text = b"InitiatorName=a\0TargetName=" + TARGET.encode() + b"\0InitiatorName=b\0"
    raw[5:8] = len(text).to_bytes(3, "big")
    (rsp,) = feed(conn, bytes(raw) + text + bytes((-len(text)) & 3))
    assert rsp.login_status == LoginStatus.INITIATOR_ERROR
    assert conn.closing


@pytest.mark.parametrize(
    "keys,status",
    [
        ([("TargetName", TARGET)], LoginStatus.MISSING_PARAMETER),
        ([("InitiatorName", INITIATOR)], LoginStatus.MISSING_PARAMETER),
        (
            [("InitiatorName", INITIATOR), ("TargetName", "iqn.2026-11.org.cairn:nope")],
            LoginStatus.NOT_FOUND,
        ),
        (
            [("InitiatorName", INITIATOR), ("TargetName", TARGET), ("SessionType", "Weird")],
            LoginStatus.SESSION_TYPE_NOT_SUPPORTED,
        ),
    ],
)
def test_login_failures(keys, status):
    conn, _ = make_connection()
    (rsp,) = feed(conn, login_pdu(keys))
    assert rsp.login_status == status
    assert conn.closing and not conn.full_feature


def test_unsupported_version_and_bad_transition():
    conn, _ = make_connection()
    (rsp,) = feed(
        conn, login_pdu([("InitiatorName", INITIATOR), ("TargetName", TARGET)], version_min=1)
    )
    assert rsp.login_status == LoginStatus.UNSUPPORTED_VERSION
    conn, _ = make_connection()
    (rsp,) = feed(
        conn, login_pdu([("InitiatorName", INITIATOR), ("TargetName", TARGET)], csg=1, nsg=0)
    )
    assert rsp.login_status == LoginStatus.INITIATOR_ERROR


def test_text_continuation_in_login():
    conn, _ = make_connection()
    whole = login_pdu([("InitiatorName", INITIATOR), ("TargetName", TARGET)])
    text = whole[48:].rstrip(b"\0") + b"\0"
    first, second = text[:10], text[10:]
    p1 = bytearray(login_pdu([], transit=False, cont=True))
    p1[5:8] = len(first).to_bytes(3, "big")
    p1 = bytes(p1[:48]) + first + bytes((-len(first)) & 3)
    (r1,) = feed(conn, p1)
    assert r1.login_status == 0 and not (r1.bhs[1] & 0x80) and not conn.full_feature
    p2 = bytearray(login_pdu([]))
    p2[5:8] = len(second).to_bytes(3, "big")
    (r2,) = feed(conn, bytes(p2[:48]) + second + bytes((-len(second)) & 3))
    assert r2.login_status == 0 and conn.full_feature


def test_chap_one_way_success():
    conn, _ = make_connection(chap=CHAP)
    out = chap_login(conn, "alice", CHAP.secret)
    assert all(r.login_status == 0 for r in out)
    assert out[0].keys["AuthMethod"] == "CHAP"
    assert conn.full_feature


def test_chap_wrong_secret_and_wrong_name_fail():
    for name, secret in (("alice", b"wrong secret value"), ("mallory", CHAP.secret)):
        conn, _ = make_connection(chap=CHAP)
        out = chap_login(conn, name, secret)
        assert out[-1].login_status == LoginStatus.AUTH_FAILURE
        assert conn.closing and not conn.full_feature


def test_chap_required_but_security_stage_skipped():
    conn, _ = make_connection(chap=CHAP)
    rsp = plain_login(conn)
    assert rsp.login_status == LoginStatus.AUTH_FAILURE


def test_chap_required_but_only_none_offered():
    conn, _ = make_connection(chap=CHAP)
    (rsp,) = feed(
        conn,
        login_pdu(
            [("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "None")],
            csg=0,
            nsg=1,
        ),
    )
    assert rsp.login_status == LoginStatus.AUTH_FAILURE


def test_mutual_chap_target_proves_itself():
    conn, _ = make_connection(chap=MUTUAL)
    challenge = bytes(range(16))
    out = chap_login(conn, "alice", MUTUAL.secret, mutual=(7, challenge))
    assert conn.full_feature
    keys = out[2].keys
    assert keys["CHAP_N"] == "target1"
    assert decode_binary(keys["CHAP_R"]) == chap_response(
        5, 7, MUTUAL.target_secret or b"", challenge
    )


def test_mutual_chap_refuses_reflected_challenge():
    conn, _ = make_connection(chap=MUTUAL)
    out = feed(
        conn,
        login_pdu(
            [("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "CHAP")],
            csg=0,
            transit=False,
        ),
    )
    out += feed(conn, login_pdu([("CHAP_A", "5")], csg=0, transit=False))
    k = out[-1].keys
    ident, challenge = int(k["CHAP_I"]), decode_binary(k["CHAP_C"])
    resp = chap_response(5, ident, MUTUAL.secret, challenge)
    (rsp,) = feed(
        conn,
        login_pdu(
            [
                ("CHAP_N", "alice"),
                ("CHAP_R", "0x" + resp.hex()),
                ("CHAP_I", str(ident)),
                ("CHAP_C", "0x" + challenge.hex()),
            ],
            csg=0,
            nsg=1,
        ),
    )
    assert rsp.login_status == LoginStatus.AUTH_FAILURE


def test_mutual_requested_without_target_secret_fails():
    conn, _ = make_connection(chap=CHAP)
    out = chap_login(conn, "alice", CHAP.secret, mutual=(1, b"x" * 16))
    assert out[-1].login_status == LoginStatus.AUTH_FAILURE


def test_acl_by_iqn_and_network():
    acl = Acl.parse([INITIATOR, "127.0.0.0/8"])
    conn, _ = make_connection(acl=acl)
    assert plain_login(conn).login_status == 0
    conn, _ = make_connection(acl=Acl.parse(["iqn.2026-11.org.example:other"]))
    assert plain_login(conn).login_status == LoginStatus.AUTHORIZATION_FAILURE
    conn, _ = make_connection(acl=Acl.parse(["10.0.0.0/8"]))
    assert plain_login(conn).login_status == LoginStatus.AUTHORIZATION_FAILURE
    with pytest.raises(ValueError, match="neither an initiator name"):
        Acl.parse(["not-a-thing"])


def test_discovery_send_targets_respects_acl():
    conn, _ = make_connection()
    (rsp,) = feed(conn, login_pdu([("InitiatorName", INITIATOR), ("SessionType", "Discovery")]))
    assert rsp.login_status == 0 and conn.discovery
    import struct

    from .iscsi_helpers import simple_pdu

    text = b"SendTargets=All\0"
    (t,) = feed(conn, simple_pdu(Op.TEXT_REQ, 0x80, 5, struct.pack(">III", 0xFFFFFFFF, 1, 0), text))
    pairs = parse_text(t.data)
    assert ("TargetName", TARGET) in pairs
    assert ("TargetAddress", "127.0.0.1:3260,1") in pairs
    conn, _ = make_connection(acl=Acl.parse(["10.0.0.0/8"]))
    feed(conn, login_pdu([("InitiatorName", INITIATOR), ("SessionType", "Discovery")]))
    (t,) = feed(conn, simple_pdu(Op.TEXT_REQ, 0x80, 5, struct.pack(">III", 0xFFFFFFFF, 1, 0), text))
    assert parse_text(t.data) == []


def test_parse_text_errors():
    with pytest.raises(TextError):
        parse_text(b"novalue\0")
    with pytest.raises(TextError):
        parse_text(b"\xff\xfe=1\0")
    with pytest.raises(TextError):
        parse_text(b"A=1\0A=2\0")


def test_chap_file(tmp_path):
    f = tmp_path / "chap"
    f.write_text("# comment\nusername=alice\nsecret=correct horse battery\n")
    cfg = load_chap_file(f)
    assert cfg.username == "alice" and not cfg.mutual
    assert "correct" not in repr(cfg)
    f.write_text("username=alice\nsecret=short\n")
    with pytest.raises(ValueError, match="at least 12") as e:
        load_chap_file(f)
    assert "short" not in str(e.value)
    f.write_text("username=alice\nsecret=correct horse battery\ntarget_secret=abcdefghijklmn\n")
    with pytest.raises(ValueError, match="both"):
        load_chap_file(f)
    f.write_text("user=alice\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_chap_file(f)


def test_a_fenced_target_refuses_new_sessions_until_the_fence_is_lifted():
    conn, _ = make_connection()
    conn.directory.fence(TARGET, "a rollback is in progress")
    rsp = plain_login(conn)
    assert rsp.login_status == LoginStatus.SERVICE_UNAVAILABLE
    conn.directory.fence(TARGET.upper(), None)  # names compare without case
    again = Connection(conn.directory, SessionTable(), lambda _s: FakeBackend(), "127.0.0.1")
    assert plain_login(again).login_status == 0
