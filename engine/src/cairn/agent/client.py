"""Clients of the node API (``AgentClient``: the CLI, tests, scripts; ``peer_request``:
one agent asking another) and of a target's status API (``target_request``)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp


class ApiError(Exception):
    """The agent answered with an error (``status`` and its ``{"error"}`` message), or
    could not be reached (``status`` 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    return ctx


class AgentClient:
    """A blocking client of one agent: ``call("GET", "/v1/pools")`` returns the decoded
    JSON or raises ``ApiError``."""

    def __init__(
        self, url: str, token: str | None, ca_file: Path | None = None, timeout: float = 60
    ):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ctx = ssl_context(ca_file) if self.url.startswith("https:") else None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.raw(method, path, body)
        if status >= 400:
            err = doc.get("error") if isinstance(doc, dict) else None
            raise ApiError(status, str(err or doc))
        return doc

    def raw(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, decoded body)`` whatever the status."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as r:
                status, raw = r.status, r.read()
                ctype = r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(503, f"cannot reach the agent at {self.url}: {e}") from None
        if "json" in ctype:
            return status, json.loads(raw) if raw else None
        return status, raw.decode(errors="replace")


async def peer_request(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    method: str,
    path: str,
    body: Any = None,
    timeout: float = 10,
) -> Any:
    """One request to a peer agent; ``ApiError`` on an error answer or no answer."""
    try:
        async with session.request(
            method,
            url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            doc = await r.json(content_type=None)
            if r.status >= 400:
                err = doc.get("error") if isinstance(doc, dict) else doc
                raise ApiError(r.status, f"{url}: {err}")
            return doc
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as e:
        raise ApiError(503, f"cannot reach {url}: {e or type(e).__name__}") from None


async def target_request(
    session: aiohttp.ClientSession,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """``(status, document)`` from the target's status API on 127.0.0.1:``port``;
    ``ApiError(503)`` when it does not answer."""
    try:
        async with session.request(
            method,
            f"http://127.0.0.1:{port}{path}",
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            raw = await r.read()
            try:
                doc = json.loads(raw) if raw else {}
            except json.JSONDecodeError:
                doc = {"error": raw.decode(errors="replace")[:500]}
            return r.status, doc
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise ApiError(503, f"the target does not answer: {e or type(e).__name__}") from None
