"""Parsing what zpool and zfs print, reading device signatures, checking requests.

Every ``zpool status`` sample below was printed by zfs-fuse 0.7.0 (Debian 12) for pools on
files under /tmp/zt; only trailing blanks were trimmed.  No daemon is needed here.
"""

from __future__ import annotations

import importlib
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from cairn.zfs.commands import (
    PoolListing,
    ZfsCommands,
    ZfsError,
    ZfsTimeout,
    libzfs_core,
    parse_nicenum,
    parse_pool_list,
)
from cairn.zfs.pools import (
    MIN_DEVICE_BYTES,
    Layout,
    LayoutError,
    PoolStatus,
    ScanState,
    Signature,
    normalize_groups,
    parse_blkid_export,
    parse_label_nvlist,
    parse_scan,
    parse_status,
    read_signatures,
    resilver_progress_of,
    resolve_device,
    vdev_spec,
)

F = [f"/tmp/zt/f{i}" for i in range(10)]

RAIDZ2_ONLINE = """\
  pool: tz
 state: ONLINE
 scrub: none requested
config:

\tNAME            STATE     READ WRITE CKSUM
\ttz              ONLINE       0     0     0
\t  raidz2-0      ONLINE       0     0     0
\t    /tmp/zt/f1  ONLINE       0     0     0
\t    /tmp/zt/f2  ONLINE       0     0     0
\t    /tmp/zt/f3  ONLINE       0     0     0
\t    /tmp/zt/f4  ONLINE       0     0     0

errors: No known data errors
"""

RAIDZ2_OFFLINE = """\
  pool: tz
 state: DEGRADED
status: One or more devices has been taken offline by the administrator.
\tSufficient replicas exist for the pool to continue functioning in a
\tdegraded state.
action: Online the device using 'zpool online' or replace the device with
\t'zpool replace'.
 scrub: none requested
config:

\tNAME            STATE     READ WRITE CKSUM
\ttz              DEGRADED     0     0     0
\t  raidz2-0      DEGRADED     0     0     0
\t    /tmp/zt/f1  ONLINE       0     0     0
\t    /tmp/zt/f2  OFFLINE      0     0     0
\t    /tmp/zt/f3  ONLINE       0     0     0
\t    /tmp/zt/f4  ONLINE       0     0     0

errors: No known data errors
"""

RAIDZ2_UNAVAIL = """\
  pool: tz
 state: DEGRADED
status: One or more devices could not be opened.  Sufficient replicas exist for
\tthe pool to continue functioning in a degraded state.
action: Attach the missing device and online it using 'zpool online'.
   see: http://www.sun.com/msg/ZFS-8000-2Q
 scrub: none requested
config:

\tNAME                      STATE     READ WRITE CKSUM
\ttz                        DEGRADED     0     0     0
\t  raidz2-0                DEGRADED     0     0     0
\t    /tmp/zt/f1            ONLINE       0     0     0
\t    /tmp/zt/f2            ONLINE       0     0     0
\t    /tmp/zt/f5            ONLINE       0     0     0
\t    12067906938650783662  UNAVAIL      0     0     0  was /tmp/zt/f4

errors: No known data errors
"""

RAIDZ2_ONLINE_RESILVERED = """\
  pool: tz
 state: ONLINE
status: One or more devices is currently being resilvered.  The pool will
\tcontinue to function, possibly in a degraded state.
action: Wait for the resilver to complete.
 scrub: resilver in progress for 0h0m, 7.02% done, 0h0m to go
config:

\tNAME            STATE     READ WRITE CKSUM
\ttz              ONLINE       0     0     0
\t  raidz2-0      ONLINE       0     0     0
\t    /tmp/zt/f1  ONLINE       0     0     0
\t    /tmp/zt/f2  ONLINE       0     0     0  184K resilvered
\t    /tmp/zt/f3  ONLINE       0     0     0
\t    /tmp/zt/f4  ONLINE       0     0     0

errors: No known data errors
"""

REPLACING_ATTACHED = """\
  pool: tz
 state: ONLINE
 scrub: resilver completed after 0h0m with 0 errors on Sun Nov 22 00:32:48 2026
config:

\tNAME              STATE     READ WRITE CKSUM
\ttz                ONLINE       0     0     0
\t  raidz2-0        ONLINE       0     0     0
\t    /tmp/zt/f1    ONLINE       0     0     0
\t    /tmp/zt/f2    ONLINE       0     0     0  2.49M resilvered
\t    replacing-2   ONLINE       0     0     0
\t      /tmp/zt/f3  ONLINE       0     0     0
\t      /tmp/zt/f5  ONLINE       0     0     0
\t    /tmp/zt/f4    ONLINE       0     0     0

errors: No known data errors
"""

REPLACING_START_AFTER_EARLIER_RESILVER = """\
  pool: tz
 state: ONLINE
 scrub: resilver completed after 0h0m with 0 errors on Sun Nov 22 00:34:59 2026
config:

\tNAME              STATE     READ WRITE CKSUM
\ttz                ONLINE       0     0     0
\t  raidz2-0        ONLINE       0     0     0
\t    /tmp/zt/f1    ONLINE       0     0     0  2.46M resilvered
\t    /tmp/zt/f2    ONLINE       0     0     0
\t    replacing-2   ONLINE       0     0     0
\t      /tmp/zt/f3  ONLINE       0     0     0
\t      /tmp/zt/f6  ONLINE       0     0     0
\t    /tmp/zt/f4    ONLINE       0     0     0

errors: No known data errors
"""

REPLACING_PROGRESS = """\
  pool: tz
 state: ONLINE
status: One or more devices is currently being resilvered.  The pool will
\tcontinue to function, possibly in a degraded state.
action: Wait for the resilver to complete.
 scrub: resilver in progress for 0h0m, 50.83% done, 0h0m to go
config:

\tNAME              STATE     READ WRITE CKSUM
\ttz                ONLINE       0     0     0
\t  raidz2-0        ONLINE       0     0     0
\t    /tmp/zt/f1    ONLINE       0     0     0
\t    /tmp/zt/f2    ONLINE       0     0     0
\t    replacing-2   ONLINE       0     0     0
\t      /tmp/zt/f3  ONLINE       0     0     0
\t      /tmp/zt/f5  ONLINE       0     0     0  13.9M resilvered
\t    /tmp/zt/f4    ONLINE       0     0     0

errors: No known data errors
"""

REPLACING_FINISHING = """\
  pool: tz
 state: ONLINE
 scrub: resilver completed after 0h0m with 0 errors on Sun Nov 22 00:34:59 2026
config:

\tNAME              STATE     READ WRITE CKSUM
\ttz                ONLINE       0     0     0
\t  raidz2-0        ONLINE       0     0     0
\t    /tmp/zt/f1    ONLINE       0     0     0
\t    /tmp/zt/f2    ONLINE       0     0     0
\t    replacing-2   ONLINE       0     0     0
\t      /tmp/zt/f3  ONLINE       0     0     0
\t      /tmp/zt/f6  ONLINE       0     0     0  32.8M resilvered
\t    /tmp/zt/f4    ONLINE       0     0     0

errors: No known data errors
"""

REPLACED_DONE = """\
  pool: tz
 state: ONLINE
 scrub: resilver completed after 0h0m with 0 errors on Sun Nov 22 00:32:48 2026
config:

\tNAME            STATE     READ WRITE CKSUM
\ttz              ONLINE       0     0     0
\t  raidz2-0      ONLINE       0     0     0
\t    /tmp/zt/f1  ONLINE       0     0     0
\t    /tmp/zt/f2  ONLINE       0     0     0
\t    /tmp/zt/f5  ONLINE       0     0     0  32.8M resilvered
\t    /tmp/zt/f4  ONLINE       0     0     0

errors: No known data errors
"""

TWO_POOLS = """\
  pool: tm
 state: ONLINE
 scrub: none requested
config:

\tNAME            STATE     READ WRITE CKSUM
\ttm              ONLINE       0     0     0
\t  mirror-0      ONLINE       0     0     0
\t    /tmp/zt/f1  ONLINE       0     0     0
\t    /tmp/zt/f2  ONLINE       0     0     0
\t  mirror-1      ONLINE       0     0     0
\t    /tmp/zt/f3  ONLINE       0     0     0
\t    /tmp/zt/f5  ONLINE       0     0     0
\tlogs
\t  /tmp/zt/f6    ONLINE       0     0     0
\tspares
\t  /tmp/zt/f7    AVAIL

errors: No known data errors

  pool: ts
 state: ONLINE
 scrub: scrub completed after 0h0m with 0 errors on Sun Nov 22 00:32:49 2026
config:

\tNAME          STATE     READ WRITE CKSUM
\tts            ONLINE       0     0     0
\t  /tmp/zt/f8  ONLINE       0     0     0
\t  /tmp/zt/f9  ONLINE       0     0     0

errors: No known data errors
"""

#: The nvlist of vdev label 0 of a mirror member of exported pool 'lbl' (zfs-fuse, pool
#: version 23), read from byte 16 KiB of the file; zdb -l shows: name 'lbl', state 1,
#: txg 11, pool_guid 16811583214650907467.
LABEL_NVLIST = bytes.fromhex(
    "01010000000000000000000100000024000000200000000776657273696f6e00000000080000000100000000"
    "000000170000002000000020000000046e616d650000000900000001000000036c626c000000002400000020"
    "0000000573746174650000000000000800000001000000000000000100000020000000200000000374786700"
    "0000000800000001000000000000000b000000280000002800000009706f6f6c5f6775696400000000000008"
    "00000001e94ebddcb52fdb4b000000240000002000000006686f737469640000000000080000000100000000"
    "007f0100000000240000002800000008686f73746e616d65000000090000000100000002766d000000000024"
    "0000002800000008746f705f6775696400000008000000012b5fbe09ea028776000000200000002000000004"
    "6775696400000008000000010b5e025bfe1164bf0000002c000000280000000d766465765f6368696c647265"
    "6e000000000000080000000100000000000000010000031c0000003800000009766465765f74726565000000"
    "0000001300000001000000000000000100000024000000200000000474797065000000090000000100000006"
    "6d6972726f720000000000200000002000000002696400000000000800000001000000000000000000000020"
    "00000020000000046775696400000008000000012b5fbe09ea0287760000002c000000280000000e6d657461"
    "736c61625f61727261790000000000080000000100000000000000180000002c000000280000000e6d657461"
    "736c61625f736869667400000000000800000001000000000000001400000024000000200000000661736869"
    "667400000000000800000001000000000000000c0000002400000020000000056173697a6500000000000008"
    "000000010000000007b8000000000024000000200000000669735f6c6f670000000000080000000100000000"
    "0000000000000028000000280000000a6372656174655f747867000000000008000000010000000000000004"
    "0000019c00000060000000086368696c6472656e000000140000000200000000000000010000002000000020"
    "000000047479706500000009000000010000000466696c650000002000000020000000026964000000000008"
    "0000000100000000000000000000002000000020000000046775696400000008000000010b5e025bfe1164bf"
    "0000002800000028000000047061746800000009000000010000000a2f746d702f7a742f6631000000000028"
    "000000280000000a6372656174655f7478670000000000080000000100000000000000040000000000000000"
    "00000000000000010000002000000020000000047479706500000009000000010000000466696c6500000020"
    "0000002000000002696400000000000800000001000000000000000100000020000000200000000467756964"
    "00000008000000013f91fe7721c6f2c40000002800000028000000047061746800000009000000010000000a"
    "2f746d702f7a742f6632000000000028000000280000000a6372656174655f74786700000000000800000001"
    "0000000000000004000000000000000000000000000000000000000000000000"
)


# -- zpool status ----------------------------------------------------------------------------


def parse_one(text: str) -> PoolStatus:
    pools = parse_status(text)
    assert len(pools) == 1
    return pools[0]


def test_a_healthy_raidz2_pool() -> None:
    pool = parse_one(RAIDZ2_ONLINE)
    assert (pool.name, pool.state, pool.health, pool.layout) == ("tz", "ONLINE", "ONLINE", "raidz2")
    assert pool.status == "" and pool.action == ""
    assert pool.errors == "No known data errors"
    assert pool.scan.kind == "none" and pool.scan.state is ScanState.NONE
    (group,) = pool.groups
    assert (group.name, group.kind, group.state) == ("raidz2-0", "raidz2", "ONLINE")
    assert [leaf.path for leaf in group.children] == F[1:5]
    assert all(leaf.kind == "disk" and leaf.is_leaf for leaf in group.children)
    assert pool.group_members() == [tuple(F[1:5])]
    assert [leaf.path for leaf in pool.leaves()] == F[1:5]
    assert pool.sections == {}
    assert (pool.root.name, pool.root.kind, pool.root.is_leaf) == ("tz", "root", False)
    assert pool.size is None and not pool.sizes_exact  # zpool list fills these


def test_an_offline_device_and_the_explanations() -> None:
    pool = parse_one(RAIDZ2_OFFLINE)
    assert pool.state == "DEGRADED"
    assert pool.status == (
        "One or more devices has been taken offline by the administrator. Sufficient "
        "replicas exist for the pool to continue functioning in a degraded state."
    )
    assert pool.action == (
        "Online the device using 'zpool online' or replace the device with 'zpool replace'."
    )
    assert pool.groups[0].state == "DEGRADED"
    offline = pool.find(F[2])
    assert offline is not None and offline.state == "OFFLINE"
    assert [leaf.state for leaf in pool.leaves()] == ["ONLINE", "OFFLINE", "ONLINE", "ONLINE"]


def test_a_missing_device_is_shown_by_guid_and_the_path_it_was() -> None:
    pool = parse_one(RAIDZ2_UNAVAIL)
    missing = pool.groups[0].children[3]
    assert missing.name == "12067906938650783662"
    assert missing.guid == "12067906938650783662"
    assert missing.path == F[4]
    assert (missing.state, missing.note) == ("UNAVAIL", f"was {F[4]}")
    assert pool.find(F[4]) is missing
    assert pool.find("12067906938650783662") is missing
    assert pool.find(F[1]) is not missing and pool.find(F[1]) is not None
    assert pool.find("/tmp/zt/f9") is None
    assert pool.group_members() == [(F[1], F[2], F[5], F[4])]


def test_two_pools_with_log_and_spare_sections() -> None:
    tm, ts = parse_status(TWO_POOLS)
    assert tm.name == "tm" and tm.layout == "mirror"
    assert [(g.name, g.kind) for g in tm.groups] == [("mirror-0", "mirror"), ("mirror-1", "mirror")]
    assert tm.group_members() == [(F[1], F[2]), (F[3], F[5])]
    assert set(tm.sections) == {"logs", "spares"}
    (log_device,) = tm.sections["logs"]
    (spare,) = tm.sections["spares"]
    assert (log_device.path, log_device.state) == (F[6], "ONLINE")
    assert (spare.path, spare.state, spare.read_errors) == (F[7], "AVAIL", 0)
    assert [leaf.path for leaf in tm.leaves()] == [F[1], F[2], F[3], F[5], F[6], F[7]]
    assert tm.find(F[7]) is spare

    assert ts.name == "ts" and ts.layout == "stripe"
    assert [(g.name, g.kind) for g in ts.groups] == [(F[8], "disk"), (F[9], "disk")]
    assert ts.group_members() == [(F[8],), (F[9],)]
    assert ts.scan.kind == "scrub" and ts.scan.state is ScanState.FINISHED
    assert ts.scan.errors == 0


def test_a_replacement_in_progress() -> None:
    pool = parse_one(REPLACING_PROGRESS)
    group = pool.groups[0]
    replacing = group.children[2]
    assert (replacing.name, replacing.kind) == ("replacing-2", "replacing")
    assert [leaf.path for leaf in replacing.children] == [F[3], F[5]]
    assert replacing.children[1].note == "13.9M resilvered"
    # the new device stands for the slot; both are devices of the pool until the end
    assert pool.group_members() == [(F[1], F[2], F[5], F[4])]
    assert [leaf.path for leaf in pool.leaves()] == [F[1], F[2], F[3], F[5], F[4]]
    assert pool.layout == "raidz2"
    assert pool.replacing() == [(F[3], F[5])]
    assert pool.parent_of(replacing.children[0]) is replacing
    assert pool.scan == parse_scan("resilver in progress for 0h0m, 50.83% done, 0h0m to go")


def test_error_counts_and_notes() -> None:
    text = RAIDZ2_ONLINE.replace(
        "\t    /tmp/zt/f3  ONLINE       0     0     0",
        "\t    /tmp/zt/f3  DEGRADED     3     1  1.2K  too many errors",
    )
    leaf = parse_one(text).find(F[3])
    assert leaf is not None
    assert (leaf.state, leaf.read_errors, leaf.write_errors) == ("DEGRADED", 3, 1)
    assert leaf.checksum_errors == int(1.2 * 1024)
    assert leaf.note == "too many errors"
    done = parse_one(REPLACED_DONE).find(F[5])
    assert done is not None and done.note == "32.8M resilvered"


@pytest.mark.parametrize(
    ("text", "in_progress", "percent", "replacing"),
    [
        (RAIDZ2_ONLINE, False, None, ()),
        (RAIDZ2_ONLINE_RESILVERED, True, 7.02, ()),
        (REPLACING_ATTACHED, True, 0.0, ((F[3], F[5]),)),
        (REPLACING_START_AFTER_EARLIER_RESILVER, True, 0.0, ((F[3], F[6]),)),
        (REPLACING_PROGRESS, True, 50.83, ((F[3], F[5]),)),
        (REPLACING_FINISHING, True, 100.0, ((F[3], F[6]),)),
        (REPLACED_DONE, False, 100.0, ()),
    ],
    ids=["idle", "online", "attached", "attached-after-resilver", "running", "finishing", "done"],
)
def test_resilver_progress(
    text: str, in_progress: bool, percent: float | None, replacing: tuple[tuple[str, str], ...]
) -> None:
    progress = resilver_progress_of(parse_one(text))
    assert progress.in_progress is in_progress
    assert progress.done is not in_progress
    assert progress.percent == percent
    assert progress.replacing == replacing
    assert progress.remaining == ("0h0m" if in_progress and percent not in (0.0, 100.0) else None)


def test_scan_lines() -> None:
    assert parse_scan("none requested").state is ScanState.NONE
    stopped = parse_scan("scrub stopped after 0h1m with 0 errors on Sun Nov 22 00:32:49 2026")
    assert (stopped.kind, stopped.state) == ("scrub", ScanState.CANCELED)
    scrubbing = parse_scan("scrub in progress for 0h2m, 12.50% done, 0h14m to go")
    assert (scrubbing.kind, scrubbing.state, scrubbing.percent) == (
        "scrub",
        ScanState.IN_PROGRESS,
        12.5,
    )
    assert scrubbing.remaining == "0h14m"
    # newer ZFS: "scan:" over several lines (joined by the parser before this call)
    newer = parse_scan(
        "resilver in progress since Sun Nov 22 00:27:52 2026 1.23G scanned at 125M/s, "
        "800M issued at 80.0M/s, 2.00G total 400M resilvered, 39.06% done, 00:00:15 to go"
    )
    assert (newer.kind, newer.state, newer.percent, newer.remaining) == (
        "resilver",
        ScanState.IN_PROGRESS,
        39.06,
        "00:00:15",
    )
    finished = parse_scan("resilvered 51.0M in 00:00:01 with 0 errors on Sun Nov 22 2026")
    assert (finished.kind, finished.state, finished.errors) == ("resilver", ScanState.FINISHED, 0)


def test_scan_key_of_newer_versions_with_continuation_lines() -> None:
    text = RAIDZ2_ONLINE.replace(
        " scrub: none requested\n",
        "  scan: resilver in progress since Sun Nov 22 00:27:52 2026\n"
        "\t1.23G scanned at 125M/s, 800M issued at 80.0M/s, 2.00G total\n"
        "\t400M resilvered, 39.06% done, 00:00:15 to go\n",
    )
    pool = parse_one(text)
    assert pool.scan.state is ScanState.IN_PROGRESS and pool.scan.percent == 39.06
    assert pool.group_members() == [tuple(F[1:5])]


def test_status_text_that_is_not_a_pool() -> None:
    assert parse_status("") == []
    with pytest.raises(ValueError, match="no 'pool:' line"):
        parse_status("no pools available\n")
    with pytest.raises(ValueError, match="names no pool"):
        parse_status("  pool: tz\n state: ONLINE\nconfig:\n\nerrors: none\n")
    broken = RAIDZ2_ONLINE.replace("\ttz              ONLINE", "\tzz              ONLINE")
    with pytest.raises(ValueError, match="config of 'zz' under pool 'tz'"):
        parse_status(broken)


# -- zpool list and sizes --------------------------------------------------------------------


def test_sizes_in_the_short_form() -> None:
    assert parse_nicenum("0") == 0
    assert parse_nicenum("12") == 12
    assert parse_nicenum("432K") == 432 << 10
    assert parse_nicenum("123M") == 123 << 20
    assert parse_nicenum("1.50G") == 3 << 29
    assert parse_nicenum("32.8M") == int(32.8 * (1 << 20))
    assert parse_nicenum("0B") == 0
    assert parse_nicenum("-") is None
    with pytest.raises(ValueError):
        parse_nicenum("12 apples")


def test_zpool_list_lines() -> None:
    text = "tm\t246M\t468K\t246M\tONLINE\nts\t246M\t676K\t245M\tDEGRADED\n"
    assert parse_pool_list(text, exact=False) == [
        PoolListing("tm", 246 << 20, 468 << 10, 246 << 20, "ONLINE", False),
        PoolListing("ts", 246 << 20, 676 << 10, 245 << 20, "DEGRADED", False),
    ]
    exact = parse_pool_list("tank\t10737418240\t4096\t10737414144\tONLINE\n", exact=True)
    assert exact == [PoolListing("tank", 10737418240, 4096, 10737414144, "ONLINE", True)]
    with pytest.raises(ValueError, match="unexpected zpool list line"):
        parse_pool_list("tm 246M 468K 246M ONLINE\n", exact=False)


def fake_tool(tmp_path: Path, name: str, script: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_zpool_list_without_exact_sizes_falls_back_to_the_short_form(tmp_path: Path) -> None:
    # what zfs-fuse's zpool answers: no -p
    zpool = fake_tool(
        tmp_path,
        "zpool",
        'for a in "$@"; do [ "$a" = -p ] && { echo "invalid option \'p\'" >&2; exit 2; }; done\n'
        'printf "tz\\t492M\\t126M\\t366M\\tONLINE\\n"\n',
    )
    commands = ZfsCommands(zpool=zpool)
    assert commands.zpool_list_exact() is False
    assert commands.list_pools() == [
        PoolListing("tz", 492 << 20, 126 << 20, 366 << 20, "ONLINE", False)
    ]


def test_zpool_list_with_exact_sizes(tmp_path: Path) -> None:
    zpool = fake_tool(
        tmp_path,
        "zpool",
        'case "$*" in *-p*) ;; *) echo "expected -p: $*" >&2; exit 9 ;; esac\n'
        'printf "tank\\t1000\\t10\\t990\\tONLINE\\n"\n',
    )
    commands = ZfsCommands(zpool=zpool)
    assert commands.zpool_list_exact() is True
    assert commands.list_pools("tank") == [PoolListing("tank", 1000, 10, 990, "ONLINE", True)]


def test_a_failing_probe_is_an_error_not_a_guess(tmp_path: Path) -> None:
    zpool = fake_tool(tmp_path, "zpool", 'echo "connect: No such file or directory" >&2\nexit 1\n')
    with pytest.raises(ZfsError, match="connect: No such file"):
        ZfsCommands(zpool=zpool).zpool_list_exact()


# -- running commands ------------------------------------------------------------------------


def test_a_failed_command_carries_command_exit_code_and_stderr(tmp_path: Path) -> None:
    zpool = fake_tool(tmp_path, "zpool", "echo \"cannot open '$2': no such pool\" >&2\nexit 1\n")
    with pytest.raises(ZfsError) as failed:
        ZfsCommands(zpool=zpool).zpool("status", "nopool")
    error = failed.value
    assert error.argv == (zpool, "status", "nopool")
    assert (error.returncode, error.stderr) == (1, "cannot open 'nopool': no such pool\n")
    assert str(error) == (
        f"zpool failed; command: {zpool} status nopool; exit code 1; "
        "stderr: cannot open 'nopool': no such pool"
    )
    result = ZfsCommands(zpool=zpool).zpool("status", "nopool", check=False)
    assert result.returncode == 1 and result.stdout == ""


def test_commands_time_out_and_missing_tools_are_named(tmp_path: Path) -> None:
    slow = fake_tool(tmp_path, "zpool", "exec sleep 5\n")
    with pytest.raises(ZfsTimeout, match="did not finish within 0.2 s"):
        ZfsCommands(zpool=slow).zpool("status", timeout=0.2)
    running = ZfsCommands(zpool=slow, timeout=0.2).spawn([slow, "replace"])
    with pytest.raises(ZfsTimeout, match="within 0.2 s"):
        running.result()
    missing = str(tmp_path / "no-such-zpool")
    with pytest.raises(ZfsError, match="not installed or not on PATH"):
        ZfsCommands(zpool=missing).zpool("list")
    with pytest.raises(ZfsError, match="not installed or not on PATH"):
        ZfsCommands().spawn([missing])


def test_spawned_command_result(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "zpool", 'echo out; echo err >&2; exit "$1"\n')
    ok = ZfsCommands().spawn([tool, "0"])
    assert ok.result().stdout == "out\n"
    with pytest.raises(ZfsError, match="exit code 3; stderr: err"):
        ZfsCommands().spawn([tool, "3"]).result()


def test_libzfs_core_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def importer(outcome: BaseException | None) -> Callable[..., object]:
        def import_module(name: str, package: str | None = None) -> object:
            if name != "libzfs_core":
                return real_import(name, package)
            if outcome is not None:
                raise outcome
            return object()

        return import_module

    try:
        for outcome, available, reason in [
            (ImportError("No module named 'libzfs_core'"), False, "pyzfs is not importable"),
            (OSError("libzfs_core.so.3: cannot open"), False, "cannot load libzfs_core"),
            (None, True, "importable"),
        ]:
            monkeypatch.setattr(importlib, "import_module", importer(outcome))
            libzfs_core.cache_clear()
            found = libzfs_core()
            assert found.available is available
            assert reason in found.reason
    finally:
        monkeypatch.undo()
        libzfs_core.cache_clear()


# -- what a device holds ---------------------------------------------------------------------


def test_label_nvlist_of_a_real_label() -> None:
    values = parse_label_nvlist(LABEL_NVLIST)
    assert values["name"] == "lbl"
    assert values["state"] == 1
    assert values["version"] == 23
    assert values["txg"] == 11
    assert values["pool_guid"] == 16811583214650907467
    assert values["hostname"] == "vm"
    assert "vdev_tree" not in values  # nested lists are skipped, what follows is read
    assert values["vdev_children"] == 1
    # truncated: what was read so far, no error
    assert parse_label_nvlist(LABEL_NVLIST[:100]) == {"version": 23, "name": "lbl"}
    assert parse_label_nvlist(b"\0" * 4096) == {}
    assert parse_label_nvlist(b"") == {}


def sparse(tmp_path: Path, name: str, size: int = MIN_DEVICE_BYTES) -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_zfs_labels_at_the_front_or_only_at_the_end(tmp_path: Path) -> None:
    front = sparse(tmp_path, "front")
    write_at(front, 16 << 10, LABEL_NVLIST)
    expected = [Signature("zfs", "a ZFS label of pool 'lbl' (state: exported)")]
    assert read_signatures(str(front)) == expected
    # the first two labels wiped, labels 2 and 3 at the end remain
    size = MIN_DEVICE_BYTES + (100 << 10)  # not a multiple of the label size
    back = sparse(tmp_path, "back", size)
    aligned = size - size % (256 << 10)
    write_at(back, aligned - (512 << 10) + (16 << 10), LABEL_NVLIST)
    assert read_signatures(str(back)) == expected


def test_filesystem_and_partition_table_signatures(tmp_path: Path) -> None:
    assert read_signatures(str(sparse(tmp_path, "blank"))) == []

    ext4 = sparse(tmp_path, "ext4")
    superblock = bytearray(1024)
    superblock[0x38:0x3A] = b"\x53\xef"
    struct.pack_into("<II", superblock, 0x5C, 0x3C, 0x2C2)  # compat, incompat (extents)
    superblock[0x68:0x78] = bytes(range(16))
    superblock[0x78:0x7C] = b"data"
    write_at(ext4, 1024, bytes(superblock))
    (found,) = read_signatures(str(ext4))
    assert found.kind == "ext4"
    assert found.description == (
        "an ext4 filesystem (UUID 00010203-0405-0607-0809-0a0b0c0d0e0f, label 'data')"
    )

    gpt = sparse(tmp_path, "gpt")
    write_at(gpt, 510, b"\x55\xaa" + b"EFI PART")  # protective MBR, then the GPT header
    assert [s.kind for s in read_signatures(str(gpt))] == ["gpt"]
    gpt4k = sparse(tmp_path, "gpt4k")
    write_at(gpt4k, 4096, b"EFI PART")
    assert [s.kind for s in read_signatures(str(gpt4k))] == ["gpt"]

    mbr = sparse(tmp_path, "mbr")
    write_at(mbr, 510, b"\x55\xaa")
    (found,) = read_signatures(str(mbr))
    assert found.kind == "mbr" and "0x55AA at byte 510" in found.description

    swap = sparse(tmp_path, "swap")
    write_at(swap, 4086, b"SWAPSPACE2")
    xfs = sparse(tmp_path, "xfs")
    write_at(xfs, 0, b"XFSB")
    lvm = sparse(tmp_path, "lvm")
    write_at(lvm, 512, b"LABELONE")
    assert [read_signatures(str(p))[0].kind for p in (swap, xfs, lvm)] == ["swap", "xfs", "lvm2"]


def test_blkid_export_output() -> None:
    ext4 = (
        "DEVNAME=/tmp/zt/e1\nUUID=c679ab9c-bcc4-413e-9850-be046e52d8cc\nVERSION=1.0\n"
        "BLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n"
    )
    assert parse_blkid_export(ext4) == [Signature("ext4", "a signature of type ext4 (blkid)")]
    member = (
        "DEVNAME=/tmp/zt/f2\nVERSION=23\nLABEL=tc\nUUID=6692454034500157822\n"
        "UUID_SUB=194070602619912906\nBLOCK_SIZE=4096\nTYPE=zfs_member\nUSAGE=filesystem\n"
    )
    assert parse_blkid_export(member) == [
        Signature("zfs", "a signature of type zfs_member (blkid, label 'tc')")
    ]
    disk = "DEVNAME=/dev/sdb\nPTUUID=0b2c1f3e\nPTTYPE=dos\n"
    assert parse_blkid_export(disk) == [Signature("mbr", "a dos partition table (blkid)")]
    assert parse_blkid_export("") == []


# -- requests --------------------------------------------------------------------------------


def test_group_sizes_per_layout() -> None:
    assert normalize_groups("stripe", ["/d/a"]) == [["/d/a"]]
    assert normalize_groups("mirror", ["/d/a", "/d/b"]) == [["/d/a", "/d/b"]]
    with pytest.raises(LayoutError, match="a mirror group needs at least 2 devices; got 1"):
        normalize_groups("mirror", ["/d/a"])
    with pytest.raises(LayoutError, match=r"raidz1 group needs at least 3 devices .*use a mirror"):
        normalize_groups("raidz1", ["/d/a", "/d/b"])
    with pytest.raises(LayoutError, match="raidz2 group needs at least 4 devices"):
        normalize_groups(Layout.RAIDZ2, ["/d/a", "/d/b", "/d/c"])
    with pytest.raises(LayoutError, match="at least 4 devices .*; got 3: /d/e, /d/f, /d/g"):
        normalize_groups("raidz2", [["/d/a", "/d/b", "/d/c", "/d/d"], ["/d/e", "/d/f", "/d/g"]])
    with pytest.raises(LayoutError, match="unknown layout 'raidz9'; choose one of stripe"):
        normalize_groups("raidz9", ["/d/a"])


def test_shapes_of_a_request(tmp_path: Path) -> None:
    # several groups; a stripe makes every device its own group
    assert normalize_groups("mirror", [["/d/a", "/d/b"], ["/d/c", "/d/d"]]) == [
        ["/d/a", "/d/b"],
        ["/d/c", "/d/d"],
    ]
    assert normalize_groups("stripe", ["/d/a", "/d/b"]) == [["/d/a"], ["/d/b"]]
    assert normalize_groups("stripe", [["/d/a", "/d/b"]]) == [["/d/a"], ["/d/b"]]
    assert normalize_groups("stripe", "/d/a") == [["/d/a"]]
    assert normalize_groups("stripe", [tmp_path / "x"]) == [[str(tmp_path / "x")]]
    for bad, why in [
        ([], "no devices given"),
        ([["/d/a", "/d/b"], "/d/c"], "not both"),
        ([[]], "non-empty list of device paths"),
        (42, "a list of device paths or a list of groups"),
    ]:
        with pytest.raises(LayoutError, match=why):
            normalize_groups("mirror", bad)
    with pytest.raises(LayoutError, match=r"groups of different widths \(2, 3\)"):
        normalize_groups("mirror", [["/d/a", "/d/b"], ["/d/c", "/d/d", "/d/e"]])


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_groups("stripe", ["disk0"]) == [[str(tmp_path / "disk0")]]


def test_one_device_under_two_names_is_refused(tmp_path: Path) -> None:
    disk = sparse(tmp_path, "disk")
    link = tmp_path / "by-id-link"
    link.symlink_to(disk)
    with pytest.raises(LayoutError, match=f"device {disk} is given twice \\(as {link}\\)"):
        normalize_groups("mirror", [str(link), str(disk)])
    with pytest.raises(LayoutError, match="is given twice"):
        normalize_groups("stripe", [str(disk), str(tmp_path / "." / "disk")])


def test_vdev_arguments() -> None:
    assert vdev_spec(Layout.STRIPE, [["/d/a"], ["/d/b"]]) == ["/d/a", "/d/b"]
    assert vdev_spec(Layout.MIRROR, [["/d/a", "/d/b"], ["/d/c", "/d/d"]]) == [
        "mirror",
        "/d/a",
        "/d/b",
        "mirror",
        "/d/c",
        "/d/d",
    ]
    assert vdev_spec(Layout.RAIDZ1, [["/d/a", "/d/b", "/d/c"]]) == [
        "raidz1",
        "/d/a",
        "/d/b",
        "/d/c",
    ]


def test_resolving_device_names(tmp_path: Path) -> None:
    disk = sparse(tmp_path, "disk")
    link = tmp_path / "link"
    link.symlink_to(disk)
    assert resolve_device(str(link)) == str(disk)
    assert resolve_device("null") == os.path.realpath("/dev/null")  # a bare name: /dev
