"""The replication protocol's codec: what is encoded decodes to the same message, however
the bytes are cut, and anything else is a ``ProtocolError``, never another exception."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn.replication import wire
from cairn.replication.wire import (
    HEADER,
    MAGIC,
    MAX_PAYLOAD,
    REPLY,
    VERSION,
    Decoder,
    Message,
    Op,
    ProtocolError,
    Status,
    VersionMismatch,
    encode,
    encode_header,
)


def as_bytes(parts: list[wire.Payload]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def test_header_layout_is_40_bytes_big_endian():
    h = encode_header(
        Op.WRITE, tag=0x0102030405060708, seq=9, offset=4096, length=512, dlen=512, status=0
    )
    assert len(h) == 40 == HEADER.size
    assert h[:4] == b"CRNR"
    assert h[4] == VERSION == 1
    assert h[5] == 4
    assert h[6:8] == b"\0\0"
    assert h[8:16] == bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert struct.unpack(">QQII", h[16:40]) == (9, 4096, 512, 512)
    r = encode_header(Op.READ, status=Status.OUT_OF_RANGE, reply=True)
    assert r[5] == 6 | REPLY == 0x86
    assert r[6:8] == b"\0\x08"


def test_opcode_and_status_values_are_the_protocol():
    assert [int(o) for o in Op] == list(range(1, 23))
    assert [o.name for o in Op][:4] == ["HELLO", "AUTH", "OPEN", "WRITE"]
    assert Op.CLOSE == 14 and Op.REBUILD == 10 and Op.READ_SEQS == 9
    assert Op.ATTACH_RING == 15 and Op.WRITE_SHM == 16
    assert Op.SNAPSHOT == 17 and Op.SNAPSHOT_DELETE == 18 and Op.SNAPSHOT_LIST == 19
    assert Op.CLONE == 20 and Op.ROLLBACK == 21 and Op.DESTROY == 22
    assert [int(s) for s in Status] == list(range(0, 13))
    assert Status.NO_SPACE == 6 and Status.INTERNAL == 10 and Status.BAD_VERSION == 1
    assert Status.SUPERSEDED == 11 and Status.CONFLICT == 12


def test_encode_does_not_copy_the_payload():
    data = bytearray(b"x" * 4096)
    parts = encode(Op.WRITE, tag=1, seq=2, offset=0, length=4096, data=data)
    assert len(parts) == 2 and parts[1] is data
    view = memoryview(data)[:512]
    parts = encode(Op.WRITE, data=view, length=512)
    assert parts[1] is view
    assert HEADER.unpack(parts[0])[-1] == 512
    assert encode(Op.FLUSH) == [encode_header(Op.FLUSH)]


@pytest.mark.parametrize("op", list(Op))
@pytest.mark.parametrize("reply", [False, True])
def test_round_trip_of_every_opcode(op: Op, reply: bool):
    data = bytes(range(256)) * 3 if op in (Op.WRITE, Op.REBUILD, Op.READ) else b""
    if op in (Op.HELLO, Op.OPEN, Op.SET_META, Op.INFO, Op.AUTH):
        data = wire.json_payload({"volume": "v", "size": 1 << 30, "op": op.name})
    parts = encode(
        op,
        tag=(1 << 64) - 1,
        seq=(1 << 63) - 1,
        offset=(1 << 64) - 512,
        length=(1 << 32) - 1,
        status=Status.NO_SPACE if reply else 0,
        data=data,
        reply=reply,
    )
    msgs = Decoder().feed(as_bytes(parts))
    assert msgs == [
        Message(
            op=int(op),
            reply=reply,
            status=Status.NO_SPACE if reply else 0,
            tag=(1 << 64) - 1,
            seq=(1 << 63) - 1,
            offset=(1 << 64) - 512,
            length=(1 << 32) - 1,
            data=data,
            version=VERSION,
        )
    ]
    assert isinstance(msgs[0].data, bytes)


messages = st.builds(
    Message,
    op=st.integers(0, 0x7F),
    reply=st.booleans(),
    status=st.integers(0, 0xFFFF),
    tag=st.integers(0, (1 << 64) - 1),
    seq=st.integers(0, (1 << 64) - 1),
    offset=st.integers(0, (1 << 64) - 1),
    length=st.integers(0, (1 << 32) - 1),
    data=st.binary(max_size=3000),
    version=st.just(VERSION),
)


def cut(stream: bytes, sizes: list[int]) -> list[bytes]:
    pieces, pos, i = [], 0, 0
    while pos < len(stream):
        n = sizes[i % len(sizes)] if sizes else len(stream)
        pieces.append(stream[pos : pos + n])
        pos += n
        i += 1
    return pieces


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=12), st.lists(st.integers(1, 700), max_size=20))
def test_any_fragmentation_decodes_the_same_messages(msgs: list[Message], sizes: list[int]):
    stream = b"".join(
        as_bytes(
            encode(
                m.op,
                tag=m.tag,
                seq=m.seq,
                offset=m.offset,
                length=m.length,
                status=m.status,
                data=m.data,
                reply=m.reply,
            )
        )
        for m in msgs
    )
    dec = Decoder()
    got: list[Message] = []
    kept: list[bytearray] = []
    for piece in cut(stream, sizes):
        # the decoder must not rely on the caller's buffer staying unchanged
        scratch = bytearray(piece)
        got += dec.feed(scratch)
        scratch[:] = b"\xff" * len(scratch)
        kept.append(scratch)
    assert got == msgs
    assert dec.pending == 0


def test_byte_by_byte_and_partial_input_is_kept():
    a = as_bytes(encode(Op.WRITE, tag=7, seq=3, offset=512, length=5, data=b"hello"))
    b = as_bytes(encode(Op.FLUSH, tag=8))
    dec = Decoder()
    out: list[Message] = []
    for i, byte in enumerate(a + b):
        out += dec.feed(bytes([byte]))
        if i < len(a) - 1:
            assert out == []
        if i == len(a) - 1:
            assert [m.tag for m in out] == [7]
    assert [(m.op, m.tag, m.data) for m in out] == [(Op.WRITE, 7, b"hello"), (Op.FLUSH, 8, b"")]
    assert dec.pending == 0


def test_bad_magic_raises_and_stays_broken():
    dec = Decoder()
    bad = b"XRNR" + encode_header(Op.FLUSH)[4:]
    with pytest.raises(ProtocolError, match="magic"):
        dec.feed(bad)
    with pytest.raises(ProtocolError):
        dec.feed(encode_header(Op.FLUSH))


def test_oversized_payload_is_refused_from_the_header_alone():
    header = HEADER.pack(MAGIC, VERSION, Op.WRITE, 0, 1, 1, 0, 0, MAX_PAYLOAD + 1)
    with pytest.raises(ProtocolError, match="exceeds"):
        Decoder().feed(header)  # no payload needed to refuse it
    ok = HEADER.pack(MAGIC, VERSION, Op.WRITE, 0, 1, 1, 0, 0, MAX_PAYLOAD)
    assert Decoder().feed(ok) == []  # the largest allowed: waits for its payload
    with pytest.raises(ValueError):
        encode_header(Op.WRITE, dlen=MAX_PAYLOAD + 1)


def test_version_mismatch_carries_the_header_fields():
    header = HEADER.pack(MAGIC, 2, Op.OPEN, 0, 0xABCDEF, 0, 0, 0, 10)
    with pytest.raises(VersionMismatch) as info:
        Decoder().feed(header)
    err = info.value
    assert isinstance(err, ProtocolError) and isinstance(err, ValueError)
    assert (err.version, err.op, err.tag, err.reply) == (2, Op.OPEN, 0xABCDEF, False)
    reply = HEADER.pack(MAGIC, 0, Op.OPEN | REPLY, 1, 5, 0, 0, 0, 0)
    with pytest.raises(VersionMismatch) as info:
        Decoder().feed(reply)
    assert (info.value.op, info.value.reply, info.value.tag) == (Op.OPEN, True, 5)


def test_magic_is_checked_before_version():
    header = HEADER.pack(b"JUNK", 2, 1, 0, 0, 0, 0, 0, 0)
    with pytest.raises(ProtocolError) as info:
        Decoder().feed(header)
    assert not isinstance(info.value, VersionMismatch)


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=200), max_size=10), st.booleans())
def test_garbage_raises_only_protocol_errors(chunks: list[bytes], valid_start: bool):
    dec = Decoder()
    if valid_start and chunks:
        chunks[0] = MAGIC + bytes([VERSION]) + chunks[0]
    for chunk in chunks:
        try:
            for m in dec.feed(chunk):
                assert isinstance(m, Message) and 0 <= m.op <= 0x7F
        except ProtocolError:
            return


def test_json_helpers():
    assert wire.parse_json(wire.json_payload({"a": [1, "é"]})) == {"a": [1, "é"]}
    for bad in (b"", b"[1]", b"nope", b"\xff\xfe", b"1", b'"s"', b"[" * 100000):
        with pytest.raises(ProtocolError):
            wire.parse_json(bad)
    assert wire.parse_json(memoryview(b'{"x":1}')) == {"x": 1}


def test_seqs_and_runs_formats():
    seqs = [0, 1, (1 << 63) - 1, 42]
    packed = wire.pack_seqs(seqs)
    assert packed == struct.pack(">4Q", *seqs)
    assert wire.unpack_seqs(packed) == seqs
    assert wire.unpack_seqs(memoryview(packed)) == seqs
    runs = [(0, 1), (1 << 40, (1 << 32) - 1)]
    assert wire.pack_runs(runs) == struct.pack(">QIQI", 0, 1, 1 << 40, (1 << 32) - 1)
    assert wire.unpack_runs(wire.pack_runs(runs)) == runs
    with pytest.raises(ProtocolError):
        wire.unpack_seqs(b"123")
    with pytest.raises(ProtocolError):
        wire.unpack_runs(b"1" * 13)


def test_auth_proofs_are_bound_to_their_context_and_input():
    secret, challenge, nonce = b"s3cret", b"c" * 32, b"n" * 32
    import hashlib
    import hmac

    assert (
        wire.client_proof(secret, challenge)
        == hmac.new(secret, b"cairn-replica-auth:" + challenge, hashlib.sha256).digest()
    )
    assert (
        wire.server_proof(secret, nonce)
        == hmac.new(secret, b"cairn-pool-auth:" + nonce, hashlib.sha256).digest()
    )
    # a server's answer cannot be replayed as a client's proof (reflection)
    assert wire.server_proof(secret, challenge) != wire.client_proof(secret, challenge)
    assert wire.client_proof(b"other", challenge) != wire.client_proof(secret, challenge)
