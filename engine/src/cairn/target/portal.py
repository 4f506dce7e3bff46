"""The asyncio side of an iSCSI portal: sockets in, ``iscsi.Connection`` in the middle,
bytes and file extents out.

The event loop never waits on anything slow: reads and writes of page-cached data are
done inline (one syscall each, no thread hop per block), flushes (fsync) run in a worker
thread, and a connection whose peer reads slowly stops being read until its queue drains.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from cairn.blockdev import Extent, ReadRun
from cairn.iscsi.connection import Connection, FlushRequest
from cairn.iscsi.session import ScsiBackend, SessionTable
from cairn.iscsi.targets import TargetDirectory, TargetSpec

log = logging.getLogger("cairn.portal")

RECV_BUFFER = 1 << 20
RECV_RESERVE = 320 << 10  # room for the largest PDU we accept (256 KiB data + headers)
SMALL_EXTENT = 64 << 10  # read into memory below this, sendfile above
READ_RUN_MAX = 1 << 20  # one pread covers at most this much of consecutive small extents
SINK_MIN = 64 << 10  # Data-Out payloads from this size are received in place
HIGH_WATER = 16 << 20  # stop reading from a peer with this much unsent output
IOV_MAX = 512
_ZEROS = memoryview(bytes(1 << 20))


class Portal:
    """All connections of one listening address."""

    def __init__(
        self,
        directory: TargetDirectory,
        backend_for: Callable[[TargetSpec], ScsiBackend],
        nop_interval: float = 5.0,
        nop_timeout: float = 30.0,
    ) -> None:
        self.directory = directory
        self.backend_for = backend_for
        self.sessions = SessionTable()
        self.connections: set[IscsiProtocol] = set()
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: IscsiProtocol(self), host, port, reuse_address=True, backlog=128
        )
        self._ticker = loop.call_later(1.0, self._tick)

    def _tick(self) -> None:
        for proto in list(self.connections):
            proto.tick(1.0)
        self._ticker = asyncio.get_running_loop().call_later(1.0, self._tick)

    def logged_in(self) -> list[str]:
        """The initiators with a normal (not discovery) session open."""
        return [r.initiator_name for r in self.sessions.by_tsih.values() if r.target_iqn]

    def cold_reset(self) -> None:
        for proto in list(self.connections):
            proto.conn._close("target cold reset")
            proto.after_feed()

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        for proto in list(self.connections):
            proto.abort()
        if self._server is not None:
            await self._server.wait_closed()


class IscsiProtocol(asyncio.BufferedProtocol):
    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.buf = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buf)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self.start = 0
        self.end = 0
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.pending: deque[Any] = deque()
        self.pending_bytes = 0
        self.writing = False
        self.paused = False
        self.flushing = False
        self.output_soon = False
        # receiving a payload (Data-Out or immediate data) into its write buffer (``_start_sink``)
        self.sink: memoryview | None = None
        self.sink_got = 0
        self.sink_bhs = b""
        self.own = False  # reading the socket ourselves (``_read_myself``)
        self.loop: asyncio.AbstractEventLoop
        self.conn: Connection

    # -- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave like one
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        # our own descriptor for the socket: we write with sendmsg/sendfile ourselves so
        # that read payloads go from the page cache to the socket without a copy
        self.fd = os.dup(sock.fileno())
        self.conn = Connection(
            self.portal.directory,
            self.portal.sessions,
            self.portal.backend_for,
            peer[0] if peer else None,
            self.portal.nop_interval,
            self.portal.nop_timeout,
        )

        def cold_reset() -> None:
            asyncio.get_running_loop().call_soon(self.portal.cold_reset)

        self.conn.on_cold_reset = cold_reset
        self.conn.on_output = self._output_later
        self.portal.connections.add(self)
        log.debug("event=connect peer=%s", peer)

    def get_buffer(self, sizehint: int) -> memoryview:
        sink = self.sink
        if sink is not None:
            return sink[self.sink_got :]
        if len(self.buf) - self.end < RECV_RESERVE:
            self._compact()
        if self.end - self.start < 48 and self.conn.awaiting_data_out:
            # Data-Out PDUs are coming: read up to the end of the next header only, so
            # that a large payload is received in place rather than copied there
            return self.view[self.end : self.start + 48]
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.sink is not None:
            self.sink_got += nbytes
            if self.sink_got == len(self.sink):
                self._sink_done()
                self.after_feed()
            return
        self._received(nbytes)
        self.after_feed()
        if self.sink is not None and not self.own and not self.paused:
            self._read_myself()

    def _received(self, nbytes: int) -> None:
        """``nbytes`` more at ``end`` of the receive buffer: feed the complete PDUs."""
        self.end += nbytes
        used = self.conn.feed(self.view[self.start : self.end])
        self.start += used
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end - self.start >= 48:
            self._start_sink()

    def _sink_done(self) -> None:
        sink, bhs = self.sink, self.sink_bhs
        assert sink is not None
        self.sink = None
        if bhs[0] & 0x3F == 0x05:
            self.conn.data_out_received(bhs, sink)
        else:
            self.conn.command_received(bhs, sink)

    def _start_sink(self) -> None:
        """If what is left in the buffer is the start of a large Data-Out for a write in
        progress, or of a write command with large immediate data, receive the rest of
        its payload straight into the write's buffer (one copy less for those bytes; the
        connection says where, or no)."""
        start = self.start
        view = self.view
        op = view[start] & 0x3F
        if op not in (0x01, 0x05) or view[start + 4]:  # SCSI Command or Data-Out, no AHS
            return
        dsl = (view[start + 5] << 16) | (view[start + 6] << 8) | view[start + 7]
        have = self.end - start - 48
        if dsl < SINK_MIN or dsl & 3 or have >= dsl:
            return
        bhs = bytes(view[start : start + 48])
        conn = self.conn
        dest = conn.data_out_sink(bhs) if op == 0x05 else conn.command_sink(bhs)
        if dest is None:
            return
        dest[:have] = view[start + 48 : self.end]
        self.start = self.end = 0
        self.sink = dest
        self.sink_got = have
        self.sink_bhs = bhs

    # -- reading the socket ourselves while payloads are received in place -----------
    # The transport receives into one buffer per system call.  While a large payload is
    # received in place (``sink``), the connection reads its socket itself (its own
    # descriptor, ``add_reader``) with ``readv``: the rest of the payload into its place
    # and the next PDU's header into the receive buffer with one call, so that a Data-Out
    # costs one receive instead of two.  Back to the transport when no Data-Out is
    # awaited, on the end of the stream or an error (the transport reports them) and
    # while the peer does not read (``HIGH_WATER``).

    def _read_myself(self) -> None:
        transport = self.transport
        if transport is None or self.fd < 0 or self.conn.closing:
            return
        transport.pause_reading()
        self.loop.add_reader(self.fd, self._readable)
        self.own = True

    def _read_by_transport(self) -> None:
        self.own = False
        self.loop.remove_reader(self.fd)
        transport = self.transport
        if not self.paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _readable(self) -> None:
        fd, view, conn = self.fd, self.view, self.conn
        for _ in range(32):  # then let the other connections have a turn
            sink = self.sink
            k = 0
            try:
                if sink is not None:  # (the receive buffer is empty meanwhile)
                    rest = sink[self.sink_got :]
                    k = len(rest)
                    nxt = view[:48] if conn.awaiting_data_out else view
                    want = k + len(nxt)
                    n = os.readv(fd, (rest, nxt))
                else:
                    if len(self.buf) - self.end < RECV_RESERVE:
                        self._compact()
                    if self.end - self.start < 48 and conn.awaiting_data_out:
                        dest = view[self.end : self.start + 48]
                    else:
                        dest = view[self.end :]
                    want = len(dest)
                    n = os.readv(fd, (dest,))
            except BlockingIOError:
                return
            except OSError as e:
                log.info("event=receive_failed peer=%s error=%r", conn.peer, e)
                self._read_by_transport()
                self.abort()
                return
            if n == 0:  # the end of the stream: the transport sees it too
                self._read_by_transport()
                return
            if sink is None:
                self._received(n)
            elif n < k:
                self.sink_got += n
            else:
                self.sink_got += k
                self._sink_done()
                if n > k:
                    self._received(n - k)
            self.after_feed()
            if not self.own:
                return
            if conn.closing or (self.sink is None and not conn.awaiting_data_out):
                self._read_by_transport()
                return
            if n < want:
                return

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.portal.connections.discard(self)
        self.conn.connection_lost()
        self.pending.clear()
        if self.fd >= 0:
            loop = asyncio.get_event_loop()
            if self.own:
                self.own = False
                loop.remove_reader(self.fd)
            if self.writing:
                loop.remove_writer(self.fd)
            os.close(self.fd)
            self.fd = -1
        log.debug("event=disconnect peer=%s", self.conn.peer)

    # -- helpers ------------------------------------------------------------------
    def _compact(self) -> None:
        """Move the start of an incomplete PDU to the front of the buffer (one memmove)."""
        k = self.end - self.start
        if self.start:
            ctypes.memmove(self.addr, self.addr + self.start, k)
        self.start, self.end = 0, k

    def tick(self, elapsed: float) -> None:
        self.conn.tick(elapsed)
        self.after_feed()

    def _output_later(self) -> None:
        """Responses appeared outside ``buffer_updated`` (an asynchronous device
        finished commands): send them once this turn of the loop is over, together."""
        if not self.output_soon:
            self.output_soon = True
            self.loop.call_soon(self._output_now)

    def _output_now(self) -> None:
        self.output_soon = False
        if self.fd >= 0:
            self.after_feed()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def after_feed(self) -> None:
        conn = self.conn
        if conn.out:
            items = conn.out
            conn.out = []
            self.pending.extend(items)
            if not self.writing:
                self._drain()
        if conn.flush_requests and not self.flushing:
            self._start_flush()
        if conn.closing and not self.pending and not self.flushing and self.transport:
            self.transport.close()
        elif self.pending_bytes > HIGH_WATER and not self.paused and self.transport:
            self.paused = True
            if self.own:
                self._read_by_transport()  # which leaves it paused
            else:
                self.transport.pause_reading()

    def _start_flush(self) -> None:
        conn = self.conn
        batch: list[FlushRequest] = conn.flush_requests
        conn.flush_requests = []
        backend = conn.backend
        self.flushing = True
        loop = asyncio.get_running_loop()
        luns = sorted({fr.lun for fr in batch})

        def work() -> None:
            assert backend is not None
            for lun in luns:
                backend.flush(lun)

        fut = loop.run_in_executor(None, work)

        def done(f: asyncio.Future[None]) -> None:
            self.flushing = False
            err = f.exception()
            if err is not None:
                log.error("event=flush_failed peer=%s error=%r", conn.peer, err)
            for fr in batch:
                conn.flush_done(fr, err if isinstance(err, Exception) else None)
            if self.fd >= 0:
                self.after_feed()

        fut.add_done_callback(done)

    def _drain(self) -> None:
        """Send as much of ``pending`` as the socket takes without blocking."""
        fd = self.fd
        if fd < 0:
            return
        pending = self.pending
        try:
            while pending:
                iov: list[Any] = []
                size = 0
                while pending and len(iov) < IOV_MAX:
                    item = pending[0]
                    if type(item) is ReadRun:
                        if iov and len(iov) + 2 * len(item.lengths) > IOV_MAX:
                            break  # send what we have first
                        pending.popleft()
                        size += self._read_run_pdus(item, iov)
                        continue
                    if type(item) is Extent:
                        if item.fd is None:
                            pending.popleft()
                            left = item.length
                            while left:
                                k = min(left, len(_ZEROS))
                                iov.append(_ZEROS[:k])
                                left -= k
                            size += item.length
                            continue
                        if item.length <= SMALL_EXTENT:
                            pending.popleft()
                            size += self._read_run(item, iov)
                            continue
                        break  # a large extent: send what we have, then sendfile it
                    pending.popleft()
                    iov.append(item)
                    size += len(item)
                if iov:
                    sent = os.writev(fd, iov)
                    if sent < size:
                        self._requeue(iov, sent)
                        self._wait_writable()
                        return
                    continue
                item = pending[0]
                sent = os.sendfile(fd, item.fd, item.offset, item.length)
                if sent < item.length:
                    pending[0] = Extent(item.fd, item.offset + sent, item.length - sent)
                    self._wait_writable()
                    return
                pending.popleft()
        except BlockingIOError:
            self._wait_writable()
            return
        except OSError as e:
            log.info("event=send_failed peer=%s error=%r", self.conn.peer, e)
            pending.clear()
            self.abort()
            return
        self.pending_bytes = 0
        if self.writing:
            self.loop.remove_writer(fd)
            self.writing = False
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        if self.conn.closing and not self.flushing and self.transport is not None:
            self.transport.close()

    def _read_run_pdus(self, run: ReadRun, iov: list[Any]) -> int:
        """The Data-In PDUs of a fast lane's ``ReadRun``: its data with one ``pread``."""
        data = os.pread(run.fd, run.total, run.offset)
        if len(data) < run.total:  # past the end of the file: zeros
            data += bytes(run.total - len(data))
        iov += run.iov(memoryview(data))
        return len(run)

    def _read_run(self, first: Extent, iov: list[Any]) -> int:
        """Read ``first`` and the small extents queued right after it (each behind its
        Data-In header) that continue it in the same file, with one ``pread``: the
        responses to sequential reads cost one system call per batch, not one each.
        Appends headers and data to ``iov`` in order; returns the bytes appended."""
        pending = self.pending
        fd = first.fd
        assert fd is not None
        parts: list[Any] = [first]
        total = first.length
        end = first.offset + total
        room = IOV_MAX - len(iov) - 1
        while len(pending) >= 2 and total < READ_RUN_MAX and len(parts) < room:
            hdr, ext = pending[0], pending[1]
            if (
                type(hdr) is Extent
                or type(ext) is not Extent
                or ext.fd != fd
                or ext.offset != end
                or ext.length > SMALL_EXTENT
            ):
                break
            pending.popleft()
            pending.popleft()
            parts.append(hdr)
            parts.append(ext)
            total += ext.length
            end += ext.length
        data = os.pread(fd, total, first.offset)
        if len(data) < total:  # past the end of the file: zeros
            data += bytes(total - len(data))
        if len(parts) == 1:
            iov.append(data)
            return total
        view = memoryview(data)
        pos = 0
        size = 0
        for part in parts:
            if type(part) is Extent:
                iov.append(view[pos : pos + part.length])
                pos += part.length
                size += part.length
            else:
                iov.append(part)
                size += len(part)
        return size

    def _requeue(self, iov: list[Any], sent: int) -> None:
        rest: list[Any] = []
        for buf in iov:
            n = len(buf)
            if sent >= n:
                sent -= n
                continue
            rest.append(memoryview(buf)[sent:] if sent else buf)
            sent = 0
        self.pending.extendleft(reversed(rest))

    def _wait_writable(self) -> None:
        self.pending_bytes = sum(
            it.length if type(it) is Extent else len(it) for it in self.pending
        )
        if not self.writing:
            self.writing = True
            self.loop.add_writer(self.fd, self._drain)
