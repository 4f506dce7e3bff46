"""A replicating target's small HTTP/JSON API (``--status-listen HOST:PORT``).

- ``GET /status``: the volume's state, each replica's address, state, numbers and
  rebuild progress (what ``cairn volume status`` prints);
- ``POST /replicas`` with ``{"add": "HOST:PORT"}`` or ``{"remove": "HOST:PORT"}``:
  scale the replica set at run time;
- ``POST /snapshots`` with ``{"name": N}``: a snapshot on every healthy replica at one
  point in time (behind a write barrier; in quorum only, after waiting up to 10 s);
  answers ``{"name", "created", "replicas"}``;
- ``GET /snapshots``: ``{"snapshots": [{"name", "created", "replicas", "size", "used",
  "unique", "reported_by"}]}`` (sizes as the replicas' stores report them);
- ``DELETE /snapshots/NAME``: deleted on every replica that holds it, later on those
  offline now (``"pending"``), before they vote again; 409 while a clone depends on it;
- ``POST /clones`` with ``{"snapshot": S, "name": C}``: volume C made from S on each
  pool server that holds S; answers ``{"name", "snapshot", "size", "replicas"}``, the
  addresses to give ``cairn target serve --volume C --replica ...``;
- ``POST /rollback`` with ``{"snapshot": S}``: every replica back to S (409 while an
  initiator is logged in); answers ``{"snapshot", "seq", "replicas", "degraded"}``;
- ``POST /resize`` with ``{"size": BYTES}``: grow online on every replica, then the LUN
  (initiators get CAPACITY DATA HAS CHANGED); shrinking is refused (400).

Errors are JSON ``{"error": ...}`` with a 4xx status: 400 a bad request, 404 no such
snapshot or endpoint, 409 a conflict (not in quorum, exists, a clone depends on it,
initiators are logged in).  It listens where the operator says (loopback by default in
the tools); it has no authentication of its own yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

log = logging.getLogger("cairn.target")

MAX_BODY = 64 << 10


async def start_status_server(
    listen: str,
    volume: Any,
    connectors: list[Any],
    lun: Any = None,
    sessions: Callable[[], list[str]] | None = None,
    fence: Callable[[str | None], None] | None = None,
) -> asyncio.Server:
    from cairn.replication.control import OperationError
    from cairn.target.operations import Operations, SnapshotBook
    from cairn.target.replicas import Connector, parse_address

    host, port = parse_address(listen)
    book = volume.book if volume.book is not None else SnapshotBook(Path("."), volume.name)
    ops = Operations(volume, book, connectors, lun=lun, sessions=sessions, fence=fence)

    async def route(method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            if path == "/snapshots" and method == "POST":
                return 200, await ops.create(body)
            if path == "/snapshots" and method == "GET":
                return 200, await ops.listing()
            if path.startswith("/snapshots/") and method == "DELETE":
                return 200, await ops.delete(unquote(path[len("/snapshots/") :]))
            if path == "/clones" and method == "POST":
                return 200, await ops.clone(body)
            if path == "/rollback" and method == "POST":
                return 200, await ops.rollback(body)
            if path == "/resize" and method == "POST":
                return 200, await ops.resize(body)
        except OperationError as e:
            return e.status, {"error": str(e)}
        return 404, {"error": f"no such endpoint: {method} {path}"}

    def scale(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "add" in body:
            address = str(body["add"])
            parse_address(address)
            volume.add_replica(address)
            c = Connector(
                volume,
                address,
                volume.num_blocks * volume.block_size,
                volume.block_size,
                connectors[0].secret if connectors else None,
            )
            connectors.append(c)
            c.start()
            return 200, {"added": address}
        if "remove" in body:
            address = str(body["remove"])
            volume.remove_replica(address)
            for c in list(connectors):
                if c.address == address:
                    connectors.remove(c)
                    asyncio.get_running_loop().create_task(c.stop())
            return 200, {"removed": address}
        return 400, {"error": 'the body must be {"add": "HOST:PORT"} or {"remove": "HOST:PORT"}'}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, doc = 500, {"error": "internal error"}
        try:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1").split()
            headers: dict[str, str] = {}
            while True:
                h = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1")
                if h in ("\r\n", "\n", ""):
                    break
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                raise ValueError("request body too large")
            raw = await reader.readexactly(length) if length else b""
            if len(line) < 2:
                status, doc = 400, {"error": "bad request line"}
            elif line[0] == "GET" and line[1] == "/status":
                status, doc = 200, volume.status()
            else:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                if line[0] == "POST" and line[1] == "/replicas":
                    status, doc = scale(body)
                else:
                    status, doc = await route(line[0], line[1], body)
        except (ValueError, json.JSONDecodeError) as e:
            status, doc = 400, {"error": str(e)}
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("event=api_failed")
        body = json.dumps(doc, indent=1).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}.get(
            status, "Error"
        )
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, reuse_address=True)
