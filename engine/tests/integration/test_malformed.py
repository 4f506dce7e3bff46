"""Bad input over a real socket: the daemon keeps serving everyone else.

Raw TCP connections send garbage, truncated and malformed PDUs (before login and after a
real login) while a libiscsi session works on the same target; afterwards the daemon is
alive, the other session's data is intact and new sessions log in.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

pytestmark = pytest.mark.integration


def bhs(op: int, flags: int, dsl: int = 0, itt: int = 1, rest: bytes = b"") -> bytes:
    head = bytes((op, flags, 0, 0, 0)) + dsl.to_bytes(3, "big") + bytes(8)
    return (head + struct.pack(">I", itt) + rest).ljust(48, b"\0")


def login(sock: socket.socket, iqn: str) -> bool:
    """Log in to ``iqn`` in one step (security stage straight to full feature); True when
    the target accepted (login status 0)."""
    keys = (
        f"InitiatorName=iqn.2024-01.io.cairn.test:raw\0TargetName={iqn}\0"
        "SessionType=Normal\0AuthMethod=None\0"
    ).encode()
    pad = bytes(-len(keys) & 3)
    isid = bytes((0x80, 0, 0, 0, 0, 1))
    head = bytes((0x43, 0x83, 0, 0, 0)) + len(keys).to_bytes(3, "big") + isid + bytes(2)
    head += struct.pack(">IHHII", 1, 0, 0, 1, 0)
    sock.sendall(head.ljust(48, b"\0") + keys + pad)
    sock.settimeout(5)
    try:
        rsp = sock.recv(4096)
    except OSError:
        return False
    return len(rsp) >= 48 and rsp[0] & 0x3F == 0x23 and rsp[36:38] == b"\0\0"


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the target may already have closed this connection: that is allowed


def test_garbage_on_other_connections_harms_nobody(cairn_target, clients):
    t = cairn_target(volume="junk", size="64M")
    clients.ok(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 1M", t.url])
    rnd = random.Random(7)
    host, port = t.portal.rsplit(":", 1)
    payloads = [
        b"\0" * 48,  # an all-zero NOP-Out with nothing negotiated
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bhs(0x01, 0x80, dsl=0xFFFFFF),  # a data segment far beyond what was negotiated
        bhs(0x3F, 0xFF, dsl=16) + b"x" * 16,  # no such opcode
        bhs(0x05, 0x80, dsl=8, itt=0xDEAD) + b"y" * 8,  # Data-Out for no task
        bytes(rnd.getrandbits(8) for _ in range(4096)),
        bhs(0x01, 0xE1, dsl=4)[:30],  # truncated header, then the connection closes
    ]
    for junk in payloads:
        for logged_in in (False, True):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                if logged_in:
                    assert login(s, t.iqn), "the raw login was refused"
                send_quietly(s, junk)
                time.sleep(0.05)
    for _ in range(20):  # and plain random bytes after a login
        with socket.create_connection((host, int(port)), timeout=5) as s:
            assert login(s, t.iqn), "the raw login was refused"
            send_quietly(s, bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 600))))
    assert t.alive, "the target died:\n" + t.stderr_text()
    r = clients.ok(["qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 1M", t.url])
    assert "Pattern verification failed" not in r.output, r.describe()
    clients.ok(["iscsi-inq", t.url])
