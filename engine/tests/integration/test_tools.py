"""The libiscsi command-line tools against the target: discovery, inquiry, capacity,
CHAP (one-way and mutual), initiator ACLs, and reopening a volume with another size."""

from __future__ import annotations

import re
import signal

import pytest

pytestmark = pytest.mark.integration

GOOD_INITIATOR = "iqn.2024-01.io.cairn.test:initiator-good"
OTHER_INITIATOR = "iqn.2024-01.io.cairn.test:initiator-other"
CHAP_USER = "cairn-initiator"
CHAP_SECRET = "initiator-secret-0123"  # CHAP secrets are at least 12 bytes (RFC 7143)
TARGET_USER = "cairn-target"
TARGET_SECRET = "target-secret-456789"
ONE_WAY = {"username": CHAP_USER, "secret": CHAP_SECRET}
MUTUAL = {**ONE_WAY, "target_username": TARGET_USER, "target_secret": TARGET_SECRET}


def login_refused(result) -> bool:
    return result.returncode != 0 and "Login Failed" in result.output


def inquiry_ok(result) -> bool:
    return result.returncode == 0 and "Peripheral Device Type:DIRECT_ACCESS" in result.stdout


def field_value(text: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}:(.*)$", text, re.MULTILINE)
    assert m, f"no {name!r} in:\n{text}"
    return m.group(1)


# --------------------------------------------------------------------------- discovery, inquiry


def test_discovery_lists_the_target(cairn_target, clients):
    t = cairn_target(volume="disco", size="64M")
    r = clients.ok(["iscsi-ls", t.portal_url])
    assert f"Target:{t.iqn} Portal:{t.portal}," in r.stdout, r.describe()
    r = clients.ok(["iscsi-ls", "-s", t.portal_url])
    assert f"Target:{t.iqn}" in r.stdout, r.describe()
    # iscsi-ls prints last LBA x block size (READ CAPACITY 10), so 64 MiB shows as 63M;
    # the exact size is checked with iscsi-readcapacity16 below.
    assert re.search(rf"Lun:{t.lun}\s+Type:DIRECT_ACCESS \(Size:63M\)", r.stdout), r.describe()


def test_standard_inquiry(cairn_target, clients):
    t = cairn_target(volume="inq")
    r = clients.ok(["iscsi-inq", t.url])
    assert field_value(r.stdout, "Peripheral Qualifier") == "CONNECTED", r.describe()
    assert field_value(r.stdout, "Peripheral Device Type") == "DIRECT_ACCESS", r.describe()
    assert field_value(r.stdout, "Vendor").strip(), r.describe()
    assert field_value(r.stdout, "Product").strip(), r.describe()
    assert field_value(r.stdout, "Revision").strip(), r.describe()
    assert field_value(r.stdout, "Removable") == "0", r.describe()
    # SPC-3 or later, and command queuing (the initiator pipelines commands)
    assert int(field_value(r.stdout, "Version").split()[0]) >= 5, r.describe()
    assert field_value(r.stdout, "CmdQue") == "1", r.describe()


def test_vpd_pages(cairn_target, clients):
    t = cairn_target(volume="vpd")
    r = clients.ok(["iscsi-inq", "-e", "1", "-c", "0", t.url])
    pages = set(re.findall(r"^Page:0x([0-9a-f]{2})", r.stdout, re.MULTILINE))
    assert {"00", "80", "83"} <= pages, r.describe()

    serial = clients.ok(["iscsi-inq", "-e", "1", "-c", str(0x80), t.url])
    m = re.search(r"Unit Serial Number:\[(.*)\]", serial.stdout)
    assert m and m.group(1).strip(), serial.describe()

    ident = clients.ok(["iscsi-inq", "-e", "1", "-c", str(0x83), t.url])
    assert "Page Code:(0x83) DEVICE_IDENTIFICATION" in ident.stdout, ident.describe()
    types = re.findall(r"Designator Type:\(\d+\) (\S+)", ident.stdout)
    assert "NAA" in types, ident.describe()
    associations = re.findall(r"Association:\(\d+\) (\S+)", ident.stdout)
    assert "LOGICAL_UNIT" in associations, ident.describe()

    # The identity of a volume never changes: same serial and designators after a restart,
    # and another volume has other ones.
    t.restart()
    assert clients.ok(["iscsi-inq", "-e", "1", "-c", str(0x80), t.url]).stdout == serial.stdout
    assert clients.ok(["iscsi-inq", "-e", "1", "-c", str(0x83), t.url]).stdout == ident.stdout
    if t.kind == "cairn":
        other = cairn_target(volume="vpd-other")
        other_serial = clients.ok(["iscsi-inq", "-e", "1", "-c", str(0x80), other.url])
        assert other_serial.stdout != serial.stdout, other_serial.describe()


@pytest.mark.parametrize("block_size", [512, 4096])
def test_readcapacity16_shows_the_size(cairn_target, clients, block_size):
    t = cairn_target(volume=f"cap{block_size}", size=96 << 20, block_size=block_size)
    r = clients.ok(["iscsi-readcapacity16", t.url])
    assert int(field_value(r.stdout, "Total size")) == 96 << 20, r.describe()
    assert int(field_value(r.stdout, "LOGICAL BLOCK LENGTH IN BYTES")) == block_size, r.describe()
    last_lba = int(field_value(r.stdout, "RETURNED LOGICAL BLOCK ADDRESS"))
    assert last_lba == (96 << 20) // block_size - 1, r.describe()
    assert clients.ok(["iscsi-readcapacity16", "-s", t.url]).stdout.strip() == str(96 << 20)


def test_size_suffix_is_binary(cairn_target, clients):
    t = cairn_target(volume="suffix", size="1G")
    r = clients.ok(["iscsi-readcapacity16", "-s", t.url])
    assert int(r.stdout.strip()) == 1 << 30, r.describe()


# --------------------------------------------------------------------------- CHAP


def test_chap_right_secret_is_admitted(cairn_target, clients):
    t = cairn_target(volume="chap", chap=ONE_WAY)
    r = clients.run(["iscsi-inq", t.url_with(CHAP_USER, CHAP_SECRET)])
    assert inquiry_ok(r), r.describe()
    r = clients.run(["iscsi-readcapacity16", "-s", t.url_with(CHAP_USER, CHAP_SECRET)])
    assert r.returncode == 0 and r.stdout.strip() == str(t.size_bytes), r.describe()


@pytest.mark.parametrize(
    "user,secret",
    [
        (CHAP_USER, "wrong-secret-0123456"),
        (CHAP_USER, CHAP_SECRET[:-1]),
        ("someone-else", CHAP_SECRET),
        (None, None),
    ],
    ids=["wrong-secret", "truncated-secret", "wrong-user", "no-credentials"],
)
def test_chap_refuses(cairn_target, clients, user, secret):
    t = cairn_target(volume="chapno", chap=ONE_WAY)
    r = clients.run(["iscsi-inq", t.url_with(user, secret)])
    assert login_refused(r), r.describe()
    assert "Authentication failure" in r.output or "Authorization failure" in r.output, r.describe()
    # the target keeps serving everyone else
    assert inquiry_ok(clients.run(["iscsi-inq", t.url_with(CHAP_USER, CHAP_SECRET)]))


def test_mutual_chap(cairn_target, clients):
    chap = MUTUAL
    t = cairn_target(volume="mutual", chap=chap)
    good = t.url_with(CHAP_USER, CHAP_SECRET, TARGET_USER, TARGET_SECRET)
    r = clients.run(["iscsi-inq", good])
    assert inquiry_ok(r), r.describe()
    r = clients.run(["iscsi-readcapacity16", "-s", good])
    assert r.returncode == 0 and r.stdout.strip() == str(t.size_bytes), r.describe()

    # The initiator expects another target secret: the target's CHAP_R does not verify.
    bad = t.url_with(CHAP_USER, CHAP_SECRET, TARGET_USER, "not-the-target-secret")
    r = clients.run(["iscsi-inq", bad])
    assert r.returncode != 0, r.describe()
    assert "Invalid CHAP_R response from the target" in r.output, r.describe()

    # One-way CHAP still works against a target configured for mutual CHAP.
    r = clients.run(["iscsi-inq", t.url_with(CHAP_USER, CHAP_SECRET)])
    assert inquiry_ok(r), r.describe()


def test_chap_secret_not_in_logs(cairn_target, clients, target_kind):
    if target_kind != "cairn":
        pytest.skip("about Cairn's own logs")
    chap = MUTUAL
    t = cairn_target(volume="chaplog", chap=chap)
    clients.run(["iscsi-inq", t.url_with(CHAP_USER, "wrong-secret-0123456")])
    clients.run(["iscsi-inq", t.url_with(CHAP_USER, CHAP_SECRET, TARGET_USER, TARGET_SECRET)])
    assert t.stop() == 0
    logs = t.stderr_text()
    assert CHAP_SECRET not in logs and TARGET_SECRET not in logs and "wrong-secret" not in logs


# --------------------------------------------------------------------------- ACL


def check_acl_refused(t, result, target_kind):
    assert login_refused(result), result.describe()
    if target_kind == "cairn":
        # the contract: a refused initiator gets an iSCSI authorization failure (0x0202);
        # tgt answers "Target not found" instead.
        assert "Authorization failure" in result.output, result.describe()


def test_acl_initiator_name(cairn_target, clients, target_kind):
    t = cairn_target(volume="aclname", allow=(GOOD_INITIATOR,))
    r = clients.run(["iscsi-inq", "-i", OTHER_INITIATOR, t.url])
    check_acl_refused(t, r, target_kind)
    r = clients.run(["iscsi-inq", "-i", GOOD_INITIATOR, t.url])
    assert inquiry_ok(r), r.describe()
    r = clients.run(["iscsi-readcapacity16", "-i", GOOD_INITIATOR, "-s", t.url])
    assert r.returncode == 0, r.describe()


def test_acl_several_initiator_names(cairn_target, clients, target_kind):
    t = cairn_target(volume="aclnames", allow=(OTHER_INITIATOR, GOOD_INITIATOR))
    for name in (GOOD_INITIATOR, OTHER_INITIATOR):
        r = clients.run(["iscsi-inq", "-i", name, t.url])
        assert inquiry_ok(r), r.describe()
    r = clients.run(["iscsi-inq", "-i", GOOD_INITIATOR + "x", t.url])
    check_acl_refused(t, r, target_kind)


def test_acl_cidr(cairn_target, clients, target_kind):
    t = cairn_target(volume="aclcidr", allow=("10.0.0.0/8",))
    r = clients.run(["iscsi-inq", t.url])
    check_acl_refused(t, r, target_kind)
    t.restart(allow=("127.0.0.0/8",))
    r = clients.run(["iscsi-inq", t.url])
    assert inquiry_ok(r), r.describe()
    t.restart(allow=("127.0.0.1/32",))
    r = clients.run(["iscsi-inq", t.url])
    assert inquiry_ok(r), r.describe()


def test_acl_name_and_cidr_both_required(cairn_target, clients, target_kind):
    if target_kind != "cairn":
        pytest.skip("tgt admits an initiator matching either list; Cairn requires both")
    t = cairn_target(volume="aclboth", allow=(GOOD_INITIATOR, "127.0.0.0/8"))
    assert inquiry_ok(clients.run(["iscsi-inq", "-i", GOOD_INITIATOR, t.url]))
    check_acl_refused(t, clients.run(["iscsi-inq", "-i", OTHER_INITIATOR, t.url]), target_kind)
    t.restart(allow=(GOOD_INITIATOR, "10.0.0.0/8"))
    check_acl_refused(t, clients.run(["iscsi-inq", "-i", GOOD_INITIATOR, t.url]), target_kind)


def test_acl_and_chap_together(cairn_target, clients, target_kind):
    t = cairn_target(volume="aclchap", allow=(GOOD_INITIATOR,), chap=ONE_WAY)
    good = t.url_with(CHAP_USER, CHAP_SECRET)
    assert inquiry_ok(clients.run(["iscsi-inq", "-i", GOOD_INITIATOR, good]))
    check_acl_refused(t, clients.run(["iscsi-inq", "-i", OTHER_INITIATOR, good]), target_kind)
    r = clients.run(
        ["iscsi-inq", "-i", GOOD_INITIATOR, t.url_with(CHAP_USER, "wrong-secret-0123456")]
    )
    assert login_refused(r), r.describe()


# --------------------------------------------------------------------------- volume lifecycle


def write_and_check(clients, url: str, offset: int, pattern: int, length: int = 65536) -> None:
    r = clients.run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern} {offset} {length}",
                     "-c", "flush", url])  # fmt: skip
    assert r.returncode == 0 and "wrote" in r.stdout, r.describe()
    check_pattern(clients, url, offset, pattern, length)


def check_pattern(clients, url: str, offset: int, pattern: int, length: int = 65536) -> None:
    r = clients.run(["qemu-io", "-f", "raw", "-c", f"read -P {pattern} {offset} {length}", url])
    assert r.returncode == 0 and "Pattern verification failed" not in r.output, r.describe()
    assert f"read {length}/{length} bytes at offset {offset}" in r.stdout, r.describe()


def capacity(clients, url: str) -> int:
    r = clients.ok(["iscsi-readcapacity16", "-s", url])
    return int(r.stdout.strip())


def test_reopen_same_size_keeps_data(cairn_target, clients):
    t = cairn_target(volume="reopen", size="64M")
    write_and_check(clients, t.url, 1 << 20, 0x5A)
    assert t.stop() == 0
    t.start()
    assert capacity(clients, t.url) == 64 << 20
    check_pattern(clients, t.url, 1 << 20, 0x5A)


def test_reopen_bigger_grows(cairn_target, clients):
    t = cairn_target(volume="grow", size="64M")
    last = (64 << 20) - 65536
    write_and_check(clients, t.url, last, 0x77)
    t.restart(size="128M")
    assert capacity(clients, t.url) == 128 << 20
    check_pattern(clients, t.url, last, 0x77)
    check_pattern(clients, t.url, 64 << 20, 0, length=1 << 20)  # the new part reads zeros
    write_and_check(clients, t.url, (128 << 20) - 65536, 0x78)


def test_reopen_smaller_is_refused(cairn_target, clients):
    t = cairn_target(volume="shrink", size="64M")
    write_and_check(clients, t.url, (64 << 20) - 65536, 0x33)
    assert t.stop() == 0
    t.reconfigure(size="32M")
    done = t.run_to_exit()
    assert done.returncode != 0, f"shrinking was accepted: {done}"
    message = done.stderr.lower()
    assert done.stderr.strip(), "no message on stderr"
    assert any(w in message for w in ("size", "smaller", "shrink")), done.stderr
    # nothing was harmed: the volume reopens at its old size with its data
    t.restart(size="64M")
    assert capacity(clients, t.url) == 64 << 20
    check_pattern(clients, t.url, (64 << 20) - 65536, 0x33)


def test_sigterm_exits_zero_and_prints_one_line(cairn_target, clients, target_kind):
    if target_kind != "cairn":
        pytest.skip("about the cairn command's contract")
    t = cairn_target(volume="term")
    clients.ok(["iscsi-inq", t.url])
    assert t.stop(signal.SIGTERM) == 0, t.stderr_text()
    assert bytes(t.extra_stdout) == b"", f"stdout after the URL line: {bytes(t.extra_stdout)!r}"
