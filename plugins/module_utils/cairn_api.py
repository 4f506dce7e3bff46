# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The node agent's HTTP API as the collection's modules use it.

``CairnClient`` speaks JSON to one agent (``api_url``) with the bearer token read from a
file on the managed host; every error answer of the agent becomes a ``CairnApiError``
carrying the HTTP status and the agent's own message (``{"error": MESSAGE}``).  A module
merges ``cairn_argument_spec()`` into its own and builds its client with
``client_from_module``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re
import socket
import time
from urllib.error import HTTPError, URLError
from urllib.parse import quote

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import SSLValidationError, open_url

DEFAULT_API_URL = "http://127.0.0.1:6060"
DEFAULT_TOKEN_FILE = "/etc/cairn/token"
DEFAULT_TIMEOUT = 60

# what each status means to the operator (docs/agent.md "API")
STATUS_MEANING = {
    400: "bad input",
    401: "token refused",
    404: "not found",
    409: "conflict with the current state",
    503: "not reachable now",
    500: "agent error",
}

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def cairn_argument_spec():
    """The options every module of the collection takes (how to reach the agent)."""
    return dict(
        api_url=dict(type="str", default=DEFAULT_API_URL),
        token_file=dict(type="path", default=DEFAULT_TOKEN_FILE),
        ca_file=dict(type="path"),
        timeout=dict(type="int", default=DEFAULT_TIMEOUT),
    )


class CairnApiError(Exception):
    """An answer of the agent that is not a success, or no answer at all.

    ``status`` is the HTTP status (``None`` when the agent could not be reached or the
    token could not be read); ``message`` is the agent's own message."""

    def __init__(self, status, message, method=None, path=None):
        super(CairnApiError, self).__init__(message)
        self.status = status
        self.message = message
        self.method = method
        self.path = path

    def __str__(self):
        where = "%s %s" % (self.method, self.path) if self.method else "the agent"
        if self.status is None:
            return "%s: %s" % (where, self.message)
        meaning = STATUS_MEANING.get(self.status, "error")
        return "%s: %s (HTTP %s, %s)" % (where, self.message, self.status, meaning)


def read_token(token_file):
    """The bearer token: the first line of ``token_file``."""
    try:
        with open(token_file) as f:
            token = f.readline().strip()
    except OSError as e:
        raise CairnApiError(None, "cannot read the token file %s: %s" % (token_file, e)) from None
    if not token:
        raise CairnApiError(None, "the token file %s is empty" % token_file)
    return token


class CairnClient:
    """JSON over HTTP(S) to one node agent."""

    def __init__(self, api_url, token_file, ca_file=None, timeout=DEFAULT_TIMEOUT):
        self.api_url = api_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file
        self.timeout = timeout
        self._token = None

    def _headers(self):
        if self._token is None:
            self._token = read_token(self.token_file)
        return {
            "Authorization": "Bearer %s" % self._token,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }

    def request(self, method, path, body=None):
        """The decoded JSON answer of ``METHOD path`` (``body`` sent as JSON)."""
        headers = self._headers()
        data = json.dumps(body) if body is not None else None
        url = self.api_url + path
        try:
            response = open_url(
                url,
                data=data,
                headers=headers,
                method=method,
                timeout=self.timeout,
                ca_path=self.ca_file,
                validate_certs=True,
                follow_redirects="none",
            )
            raw = response.read()
        except HTTPError as e:
            raise CairnApiError(e.code, _error_message(e), method, path) from None
        except SSLValidationError as e:
            raise CairnApiError(None, "TLS: %s" % e, method, path) from None
        except (OSError, URLError, UrlsConnectionError, socket.timeout) as e:
            reason = getattr(e, "reason", e)
            raise CairnApiError(
                None, "cannot reach the agent at %s: %s" % (self.api_url, reason), method, path
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CairnApiError(
                None, "the agent's answer is not JSON: %r" % raw[:200], method, path
            ) from None

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body=None):
        return self.request("POST", path, body if body is not None else {})

    def patch(self, path, body):
        return self.request("PATCH", path, body)

    def delete(self, path, body=None):
        return self.request("DELETE", path, body)

    def get_or_none(self, path):
        """``GET path``, or ``None`` when the agent answers 404."""
        try:
            return self.get(path)
        except CairnApiError as e:
            if e.status == 404:
                return None
            raise

    # -- the objects ------------------------------------------------------------------

    def pool(self, name):
        for pool in self.get("/v1/pools") or []:
            if pool.get("name") == name:
                return pool
        return None

    def volume(self, name):
        return self.get_or_none("/v1/volumes/%s" % quote(name, safe=""))

    def snapshots(self, volume):
        doc = self.get("/v1/volumes/%s/snapshots" % quote(volume, safe=""))
        if isinstance(doc, dict):
            return doc.get("snapshots") or []
        return doc or []

    def volume_status(self, volume):
        return self.get("/v1/volumes/%s/status" % quote(volume, safe=""))


def _error_message(e):
    """The agent's message in an error answer (``{"error": ...}``), else the body."""
    try:
        raw = e.read()
    except Exception:  # the body is already gone
        raw = b""
    try:
        doc = json.loads(raw)
    except (ValueError, TypeError):
        doc = None
    if isinstance(doc, dict) and doc.get("error"):
        return str(doc["error"])
    text = raw.decode("utf-8", "replace").strip() if raw else ""
    return text or str(getattr(e, "reason", e))


def client_from_module(module):
    p = module.params
    return CairnClient(p["api_url"], p["token_file"], p.get("ca_file"), p["timeout"])


def fail_api(module, error, what, **result):
    """``fail_json`` with what was being done and the agent's own answer."""
    module.fail_json(
        msg="%s: %s" % (what, error), status=error.status, agent_error=error.message, **result
    )


def parse_size(value):
    """Bytes in ``value``: an integer, or a number with K, M, G, T or P (powers of 1024,
    ``G``, ``GiB`` and ``GB`` alike), as the agent reads it."""
    if isinstance(value, bool):
        raise ValueError("size %r is not a number of bytes" % (value,))
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise ValueError(
                "size %r is not a number with an optional K, M, G, T or P suffix" % (value,)
            )
        size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size <= 0:
        raise ValueError("size %r must be positive" % (value,))
    return size


def format_size(n):
    """``n`` bytes in the largest unit that divides it: ``16M``, ``1G``, ``512``."""
    for suffix, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor and n % factor == 0:
            return "%d%s" % (n // factor, suffix)
    return str(n)


def check_name(value, what):
    """``None`` when ``value`` is a name the agent accepts, else why not."""
    if not _NAME_RE.match(value or ""):
        return "%s %r: letters, digits, '.', '_' or '-', at most 63 characters" % (what, value)
    return None


def parse_replica(text):
    """``(NODE, POOL)`` of ``NODE/POOL``; ``ValueError`` with the reason otherwise."""
    parts = str(text).split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts):
        raise ValueError("replica %r must be NODE/POOL" % (text,))
    return parts[0], parts[1]


def placement_problem(replicas, allow_same_node=False):
    """Why ``replicas`` (``NODE/POOL``) cannot be one volume's replica set, or ``None``."""
    nodes = []
    for r in replicas:
        try:
            nodes.append(parse_replica(r)[0])
        except ValueError as e:
            return str(e)
    seen = set()
    for r in replicas:
        if r in seen:
            return "replicas: %s is named twice" % r
        seen.add(r)
    if not allow_same_node:
        for n in sorted(set(nodes)):
            on_node = [r for r in replicas if r.split("/")[0] == n]
            if len(on_node) > 1:
                return (
                    "replicas: %s are all on node %s; each replica must be on a different "
                    "node, so losing one host loses one copy (set allow_same_node: true only "
                    "for a one-machine setup)" % (", ".join(on_node), n)
                )
    return None


def is_healthy(status, count=None):
    """The target's status document says healthy, every replica too (and ``count``
    replicas when given)."""
    if not isinstance(status, dict) or status.get("state") != "healthy":
        return False
    replicas = status.get("replicas") or []
    if count is not None and len(replicas) != count:
        return False
    return all(r.get("state") == "healthy" for r in replicas)


def describe_status(status):
    """One line about a status document, for a message: state and each replica's."""
    if not isinstance(status, dict):
        return "no status"
    parts = []
    for r in status.get("replicas") or []:
        text = "%s %s" % (r.get("address"), r.get("state"))
        rebuild = r.get("rebuild") or {}
        if rebuild.get("total_bytes"):
            text += " (rebuild %d%%)" % (
                100 * rebuild.get("done_bytes", 0) // rebuild["total_bytes"]
            )
        parts.append(text)
    return "state %s; replicas: %s" % (status.get("state"), ", ".join(parts) or "none")


def wait_healthy(
    client, volume, count, timeout, interval=1.0, clock=time.monotonic, sleep=time.sleep
):
    """Poll the volume's status until it is healthy with ``count`` replicas; the last
    status.  ``CairnApiError`` (status ``None``) when ``timeout`` seconds pass first."""
    deadline = clock() + timeout
    last, last_error = None, None
    while True:
        try:
            last = client.volume_status(volume)
            last_error = None
        except CairnApiError as e:
            if e.status not in (None, 503):
                raise
            last_error = e
        if last_error is None and is_healthy(last, count):
            return last
        if clock() >= deadline:
            why = str(last_error) if last_error is not None else describe_status(last)
            raise CairnApiError(
                None,
                "volume %s is not healthy with %d replicas after %s s (%s)"
                % (volume, count, timeout, why),
                "GET",
                "/v1/volumes/%s/status" % volume,
            )
        sleep(interval)
