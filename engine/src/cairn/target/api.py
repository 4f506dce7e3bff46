"""A replicating target's small HTTP/JSON API (``--status-listen HOST:PORT``).

- ``GET /status``: the volume's state, each replica's address, state, numbers and
  rebuild progress (what ``cairn volume status`` prints);
- ``POST /replicas`` with ``{"add": "HOST:PORT"}`` or ``{"remove": "HOST:PORT"}``:
  scale the replica set at run time.

Errors are JSON ``{"error": ...}`` with a 4xx status.  It listens where the operator
says (loopback by default in the tools); it has no authentication of its own yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("cairn.target")

MAX_BODY = 64 << 10


async def start_status_server(listen: str, volume: Any, connectors: list[Any]) -> asyncio.Server:
    from cairn.target.replicas import Connector, parse_address

    host, port = parse_address(listen)

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
            elif line[0] == "POST" and line[1] == "/replicas":
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                status, doc = scale(body)
            else:
                status, doc = 404, {"error": f"no such endpoint: {' '.join(line[:2])}"}
        except (ValueError, json.JSONDecodeError) as e:
            status, doc = 400, {"error": str(e)}
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("event=api_failed")
        body = json.dumps(doc, indent=1).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
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
