"""The node API (HTTP/JSON, aiohttp): routing, the bearer token, TLS, JSON errors and
the OpenAPI document (``openapi.py``).  The work is in ``ops.Agent``."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cairn.agent.config import ConfigError
from cairn.agent.openapi import document
from cairn.agent.ops import Agent, OpError

log = logging.getLogger("cairn.agent")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AGENT_KEY = web.AppKey("agent", Agent)
OPEN = {("GET", "/v1/health")}
MAX_BODY = 1 << 20


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, dumps=lambda d: json.dumps(d, indent=1))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OpError as e:
        return _error(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        reason = {404: f"no such endpoint: {request.method} {request.path}"}
        return _error(e.status, reason.get(e.status, e.reason))
    except ConfigError as e:
        return _error(500, str(e))
    except Exception:
        log.exception("event=api_failed method=%s path=%s", request.method, request.path)
        return _error(500, "internal error (see the agent's log)")


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route.resource
    canonical = route.canonical if route is not None else request.path
    if (request.method, canonical) not in OPEN:
        token = request.app[AGENT_KEY].config.token()
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            return _error(401, "a valid bearer token is required (Authorization: Bearer ...)")
    return await handler(request)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        doc = json.loads(await request.read() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OpError(400, f"the body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise OpError(400, "the body must be a JSON object")
    return doc


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


# -- handlers -----------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    a = _agent(request)
    return _json({"ok": True, "node": a.config.name, "version": a.state.version})


async def openapi(request: web.Request) -> web.Response:
    return _json(document())


async def list_pools(request: web.Request) -> web.Response:
    return _json(_agent(request).list_pools())


async def create_pool(request: web.Request) -> web.Response:
    return _json(await _agent(request).create_pool(await _body(request)), 201)


async def show_pool(request: web.Request) -> web.Response:
    return _json(await _agent(request).show_pool(request.match_info["pool"]))


async def delete_pool(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json(await _agent(request).delete_pool(request.match_info["pool"], body))


async def list_volumes(request: web.Request) -> web.Response:
    return _json(_agent(request).list_volumes())


async def create_volume(request: web.Request) -> web.Response:
    return _json(await _agent(request).create_volume(await _body(request)), 201)


async def show_volume(request: web.Request) -> web.Response:
    return _json(await _agent(request).show_volume(request.match_info["vol"]))


async def delete_volume(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json(await _agent(request).delete_volume(request.match_info["vol"], body))


async def patch_volume(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json(await _agent(request).resize_volume(request.match_info["vol"], body))


async def volume_status(request: web.Request) -> web.Response:
    return _json(await _agent(request).volume_status(request.match_info["vol"]))


async def add_replica(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json(await _agent(request).add_replica(request.match_info["vol"], body))


async def remove_replica(request: web.Request) -> web.Response:
    m = request.match_info
    return _json(await _agent(request).remove_replica(m["vol"], f"{m['node']}/{m['pool']}"))


async def list_snapshots(request: web.Request) -> web.Response:
    return _json(await _agent(request).list_snapshots(request.match_info["vol"]))


async def create_snapshot(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json(await _agent(request).create_snapshot(request.match_info["vol"], body), 201)


async def delete_snapshot(request: web.Request) -> web.Response:
    m = request.match_info
    body = await _body(request)
    return _json(await _agent(request).delete_snapshot(m["vol"], m["snap"], body))


async def rollback(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json(await _agent(request).rollback(request.match_info["vol"], body))


async def clone(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json(await _agent(request).clone(request.match_info["vol"], body), 201)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/health", health),
    ("GET", "/openapi.json", openapi),
    ("GET", "/v1/pools", list_pools),
    ("POST", "/v1/pools", create_pool),
    ("GET", "/v1/pools/{pool}", show_pool),
    ("DELETE", "/v1/pools/{pool}", delete_pool),
    ("GET", "/v1/volumes", list_volumes),
    ("POST", "/v1/volumes", create_volume),
    ("GET", "/v1/volumes/{vol}", show_volume),
    ("DELETE", "/v1/volumes/{vol}", delete_volume),
    ("PATCH", "/v1/volumes/{vol}", patch_volume),
    ("GET", "/v1/volumes/{vol}/status", volume_status),
    ("POST", "/v1/volumes/{vol}/replicas", add_replica),
    ("DELETE", "/v1/volumes/{vol}/replicas/{node}/{pool}", remove_replica),
    ("GET", "/v1/volumes/{vol}/snapshots", list_snapshots),
    ("POST", "/v1/volumes/{vol}/snapshots", create_snapshot),
    ("DELETE", "/v1/volumes/{vol}/snapshots/{snap}", delete_snapshot),
    ("POST", "/v1/volumes/{vol}/rollback", rollback),
    ("POST", "/v1/volumes/{vol}/clones", clone),
]


def make_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[errors, auth], client_max_size=MAX_BODY)
    app[AGENT_KEY] = agent
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """``(METHOD, path template)`` of every route ``app`` serves (HEAD aside)."""
    out = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD":
            out.add((route.method, info))
    return out
