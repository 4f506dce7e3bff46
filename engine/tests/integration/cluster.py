"""A replicated volume on one machine, made of real processes, and the faults to inject.

Each pool server runs as its own ``cairn pool serve`` process on its own loopback
address (127.0.0.2, 127.0.0.3, ...) with its pool on its own tmpfs (so that a disk can
really fill up), or, with ``ZfsPoolNode`` (``zfs_node.py``), on its own zfs-fuse pool.
The target reaches every pool server through a ``FaultProxy`` on
another loopback address, which can delay or cut that one network path.  The target is
a ``cairn target serve --replica ...`` process with a status API.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import find_cairn, free_port, tail

READY_TIMEOUT = 30.0


def _cmd(*args: str) -> list[str]:
    return [find_cairn(), "--log-level", "info", *args]


def _wait_line(proc: subprocess.Popen[bytes], prefix: str, timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        if sel.select(0.2):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    sel.close()
                    return line
        if proc.poll() is not None:
            break
    sel.close()
    raise RuntimeError(f"no line starting with {prefix!r} (exit {proc.poll()})")


class FaultProxy:
    """A TCP relay from ``listen`` to ``upstream`` whose path can be delayed or cut.

    ``delay`` (seconds) holds every chunk that long before passing it on; ``cut``
    black-holes the path: existing connections stop moving data (nothing is closed, as
    when a cable is pulled) and new ones are accepted but go nowhere."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen = listen
        self.upstream = upstream
        self.delay = 0.0
        self.cut = False
        self._sock = socket.create_server(listen, reuse_port=False)
        self._stop = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.cut:
                with self._lock:
                    self._pairs.append((client, client))  # held open, never answered
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                client.close()
                continue
            server.settimeout(None)  # the connect timeout must not end an idle relay
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._stop:
                data = src.recv(1 << 20)
                if not data:
                    break
                while self.cut and not self._stop:
                    time.sleep(0.05)
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def drop_all(self) -> None:
        """Close every relayed connection (both ends see a reset)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._sock.close()
        self.drop_all()


class PoolProcess:
    """One pool server: a ``cairn pool serve`` process on 127.0.0.<n> behind its own
    ``FaultProxy``.  Subclasses keep the pool somewhere (``storage_args``) and know how to
    copy, restore and fill it."""

    def __init__(self, root: Path, index: int, port: int, secret_file: Path | None = None) -> None:
        self.secret_file = secret_file
        self.index = index
        self.name = f"pool{index}"
        self.host = f"127.0.0.{index + 2}"
        self.port = port
        self.log = root / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy = FaultProxy((f"127.0.1.{index + 2}", port), (self.host, port))

    @property
    def address(self) -> str:
        """What the target connects to: the proxy in front of the pool server."""
        return f"{self.proxy.listen[0]}:{self.proxy.listen[1]}"

    def storage_args(self) -> list[str]:
        """The options of ``cairn pool serve`` that say where the pool is."""
        raise NotImplementedError

    def start(self) -> PoolProcess:
        args = ["pool", "serve", "--name", self.name, *self.storage_args(),
                "--listen", f"{self.host}:{self.port}"]  # fmt: skip
        if self.secret_file is not None:
            args += ["--secret-file", str(self.secret_file)]
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(_cmd(*args), stdout=subprocess.PIPE, stderr=err)
        _wait_line(self.proc, "ready ", READY_TIMEOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop_process(self) -> None:
        """SIGSTOP: the process hangs, its sockets stay open."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def continue_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def copy_data(self, dest: Path) -> None:
        """A crash-consistent copy of the pool, taken while the process is stopped."""
        raise NotImplementedError

    def restore_data(self, src: Path) -> None:
        """Put the copy ``copy_data(src)`` made back in place of the pool (the process
        is dead): the replicas hold older data and older seqs again."""
        raise NotImplementedError

    def fill(self) -> None:
        """Make the pool run out of space: the next write that needs space fails."""
        raise NotImplementedError

    def unfill(self) -> None:
        """Give the space ``fill`` took back (nothing when there was no fill)."""
        raise NotImplementedError

    def release_storage(self) -> None:
        """Called by ``cleanup`` once the process is dead."""

    def cleanup(self) -> None:
        self.continue_process()
        self.kill()
        self.proxy.close()
        self.release_storage()

    def stderr(self) -> str:
        return tail(self.log, 60)


class PoolNode(PoolProcess):
    """A pool server of the embedded store, its pool on its own tmpfs."""

    def __init__(
        self,
        root: Path,
        index: int,
        port: int,
        tmpfs_size: str = "96m",
        secret_file: Path | None = None,
    ) -> None:
        self.mount = root / f"mnt{index}"
        self.mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size}", "tmpfs", str(self.mount)],
            check=True,
        )
        self.path = self.mount / "pool"
        self.filler = self.mount / "filler"
        super().__init__(root, index, port, secret_file)

    def storage_args(self) -> list[str]:
        return ["--path", str(self.path)]

    def copy_data(self, dest: Path) -> None:
        self.stop_process()
        try:
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(self.path, dest)
        finally:
            self.continue_process()

    def restore_data(self, src: Path) -> None:
        assert not self.alive()
        shutil.rmtree(self.path)
        shutil.copytree(src, self.path)

    def fill(self) -> None:
        """Take every free byte of the tmpfs.  Only writes to blocks the replica never
        wrote need space: the data file is sparse, and an overwrite stays in place.

        The space is taken a piece at a time: a tmpfs gives back everything a fallocate
        took when it fails, and one fallocate of all the free space fails whenever the
        pool server takes a page between the ``statvfs`` and the call."""
        with open(self.filler, "wb") as f:
            end = 0
            for step in (1 << 20, 4096):
                while True:
                    try:
                        os.posix_fallocate(f.fileno(), end, step)
                    except OSError:
                        break
                    end += step

    def unfill(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def release_storage(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], check=False)


class ReplicatedTarget:
    def __init__(
        self,
        root: Path,
        volume: str,
        size: str,
        replicas: list[str],
        hold_time: float,
        replica_timeout: float,
        extra: list[str] | None = None,
    ):
        self.volume = volume
        self.size = size
        self.replicas = replicas
        self.state = root / "target-state"
        self.port = free_port()
        self.api = free_port()
        self.iqn = f"iqn.2026-11.io.cairn.test:{volume}"
        self.log = root / "target.log"
        self.hold_time = hold_time
        self.replica_timeout = replica_timeout
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{self.iqn}/0"

    def command(self) -> list[str]:
        args = [
            "target",
            "serve",
            "--volume",
            self.volume,
            "--size",
            self.size,
            "--portal",
            f"127.0.0.1:{self.port}",
            "--iqn",
            self.iqn,
            "--state-dir",
            str(self.state),
            "--status-listen",
            f"127.0.0.1:{self.api}",
            "--hold-time",
            str(self.hold_time),
            "--replica-timeout",
            str(self.replica_timeout),
            *self.extra,
        ]
        for r in self.replicas:
            args += ["--replica", r]
        return _cmd(*args)

    def start(self) -> ReplicatedTarget:
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=err)
        _wait_line(self.proc, "iscsi://", READY_TIMEOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/status", timeout=5) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc

    def wait_healthy(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                doc = self.status()
                if doc["state"] == "healthy":
                    return doc
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            f"volume not healthy after {timeout} s: {json.dumps(doc, indent=1)[:3000]}\n"
            f"{tail(self.log, 80)}"
        )

    def stderr(self) -> str:
        return tail(self.log, 120)


class Cluster:
    """``rf`` pool servers and one replicating target serving ``volume``."""

    def __init__(
        self,
        root: Path,
        rf: int = 3,
        size: str = "16M",
        hold_time: float = 4.0,
        replica_timeout: float = 1.0,
        tmpfs_size: str = "96m",
        extra: list[str] | None = None,
        make_node: Callable[[Path, int, int], PoolProcess] | None = None,
        local_links: bool = False,
    ) -> None:
        """``make_node(root, index, port)`` makes the pool nodes (default: ``PoolNode``,
        the embedded store on a tmpfs of ``tmpfs_size``).  The target reaches each pool
        server through its ``FaultProxy`` over TCP (``--local-socket off``), so that
        network faults reach it; with ``local_links``, straight at the pool server, and
        from there through its local socket (docs/replication.md), where only process
        faults apply."""
        self.root = root
        self.local_links = local_links
        port = free_port("127.0.0.2")
        self.nodes: list[PoolProcess] = []
        try:
            for i in range(rf):
                if make_node is None:
                    self.nodes.append(PoolNode(root, i, port, tmpfs_size))
                else:
                    self.nodes.append(make_node(root, i, port))
            if local_links:
                addresses = [f"{n.host}:{n.port}" for n in self.nodes]
            else:
                addresses = [n.address for n in self.nodes]
                extra = [*(extra or []), "--local-socket", "off"]
            self.target = ReplicatedTarget(
                root, "vol", size, addresses, hold_time, replica_timeout, extra
            )
            for n in self.nodes:
                n.start()
            self.target.start()
        except BaseException:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        if hasattr(self, "target"):
            self.target.kill()
        for n in self.nodes:
            n.cleanup()

    def report(self) -> str:
        parts = [f"--- target ---\n{self.target.stderr()}"]
        parts += [f"--- {n.name} ---\n{n.stderr()}" for n in self.nodes]
        return "\n".join(parts)
