"""Small file-system helpers for the stores: hole punching, space reservation, atomic
metadata files, kernel-side copies and the mapping of ``OSError`` to store errors."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
from pathlib import Path
from typing import Any

from cairn.blockdev import MediumError, NoSpaceError, StoreError

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int

_ZEROS = bytes(1 << 20)


def os_error(exc: OSError, what: str) -> StoreError:
    """The store error for ``exc``; ``what`` names the volume and the operation."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"{what}: no space left in the pool ({exc.strerror})")
    if exc.errno == errno.EIO:
        return MediumError(f"{what}: I/O error from the backing storage ({exc.strerror})")
    return StoreError(f"{what}: {exc.strerror or exc}")


class PunchUnsupported(Exception):
    """The file system cannot punch holes; the caller writes zeros instead."""


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``length`` bytes at ``offset``; the range reads as zeros afterwards.

    Partial file-system blocks at the edges are zeroed by the kernel.  Raises
    ``PunchUnsupported`` where the file system has no hole punching.
    """
    if length <= 0:
        return
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise PunchUnsupported()
    raise OSError(err, os.strerror(err))


def write_zeros(fd: int, offset: int, length: int) -> None:
    """Fallback for ``punch_hole``: overwrite the range with zeros."""
    view = memoryview(_ZEROS)
    while length > 0:
        n = os.pwrite(fd, view[: min(length, len(_ZEROS))], offset)
        offset += n
        length -= n


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate blocks for a range without changing the file size (so that a later
    store through a shared mapping cannot fail with SIGBUS for lack of space)."""
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        # No fallocate: write the range back with what it holds (zeros where it is a
        # hole), which allocates it without changing a byte.
        while length > 0:
            chunk = os.pread(fd, min(length, len(_ZEROS)), offset)
            if not chunk:  # beyond the end of the file: zeros, without growing it
                return
            written = os.pwrite(fd, chunk, offset)
            offset += written
            length -= written
        return
    raise OSError(err, os.strerror(err))


def next_data(fd: int, offset: int) -> int | None:
    """Offset of the first byte at or after ``offset`` that is not in a hole, or None."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        if exc.errno == errno.EINVAL:  # no SEEK_DATA support: everything is data
            return offset
        raise


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Copy bytes between two files at the same offset, inside the kernel if possible."""
    while length > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = 0
        if n == 0:
            chunk = os.pread(src_fd, min(length, 1 << 20), offset)
            if not chunk:
                chunk = bytes(min(length, 1 << 20))
            n = os.pwrite(dst_fd, chunk, offset)
        offset += n
        length -= n


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: write a temporary file, fsync it, rename it over
    the old one and fsync the directory, so a crash leaves the old or the new file.  On
    an error the temporary file is removed and the old file stays."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def boot_id() -> bytes:
    """16 bytes that identify this boot of the machine (zeros when unknown)."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return bytes.fromhex(text.replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)
