"""The node file (``/etc/cairn/node.yml``): who this node is and where it listens.

```yaml
name: node-a                      # default: the host name
address: 10.0.0.1                 # where other hosts reach this node's pools and targets
state_dir: /var/lib/cairn         # desired.json, logs/, run/, volumes/
api:
  listen: 0.0.0.0:6060
  token_file: /etc/cairn/token    # required: the bearer token of the API
  tls_cert: /etc/cairn/tls.crt    # optional, with tls_key
  tls_key: /etc/cairn/tls.key
  ca_file: /etc/cairn/ca.crt      # optional: what peers' certificates are checked against
metrics:
  listen: 0.0.0.0:9500
peers:                            # the other nodes' agents
  node-b: http://10.0.0.2:6060
replication:
  secret_file: /etc/cairn/replication.secret   # optional: pool servers' shared secret
```

Every mistake is a ``ConfigError`` whose message names the key.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cairn.daemon import parse_host_port

DEFAULT_PATH = Path("/etc/cairn/node.yml")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

_TOP = {"name", "address", "state_dir", "api", "metrics", "peers", "replication"}
_API = {"listen", "token_file", "tls_cert", "tls_key", "ca_file"}
_METRICS = {"listen"}
_REPLICATION = {"secret_file"}


class ConfigError(ValueError):
    """The node file is wrong; the message names the key and says what is expected."""


@dataclass
class NodeConfig:
    name: str
    state_dir: Path
    token_file: Path
    address: str = "127.0.0.1"
    api_listen: str = "0.0.0.0:6060"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_file: Path | None = None
    metrics_listen: str = "0.0.0.0:9500"
    peers: dict[str, str] = field(default_factory=dict)
    secret_file: Path | None = None
    source: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def token(self) -> str:
        """The API token (read each time, so that a new token file needs no restart)."""
        return read_token(self.token_file)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"api.token_file: cannot read {path}: {e.strerror or e}") from None
    if len(token) < 16:
        raise ConfigError(f"api.token_file: the token in {path} must be at least 16 characters")
    return token


def _section(doc: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: must be a non-empty string")
    return value.strip()


def _path(value: Any, key: str) -> Path:
    return Path(_str(value, key))


def _listen(value: Any, key: str, default: str) -> str:
    text = default if value is None else _str(value, key)
    try:
        parse_host_port(text, key, default, listen=True)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return text


def parse(doc: Any, source: Path | None = None) -> NodeConfig:
    """A ``NodeConfig`` from the parsed YAML document ``doc``."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("the node file must be a mapping of keys to values")
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(_TOP))})")
    name = _str(doc["name"], "name") if doc.get("name") is not None else socket.gethostname()
    if not NAME_RE.match(name):
        raise ConfigError(
            f"name: {name!r} must be letters, digits, '.', '_' or '-' (at most 63, no '/')"
        )
    if doc.get("state_dir") is None:
        raise ConfigError("state_dir: required (where the agent keeps desired.json and logs)")
    state_dir = _path(doc["state_dir"], "state_dir")
    address = _str(doc.get("address", "127.0.0.1"), "address")
    api = _section(doc, "api", _API)
    if api.get("token_file") is None:
        raise ConfigError("api.token_file: required (the file holding the API's bearer token)")
    cert = _path(api["tls_cert"], "api.tls_cert") if api.get("tls_cert") is not None else None
    key = _path(api["tls_key"], "api.tls_key") if api.get("tls_key") is not None else None
    if (cert is None) != (key is None):
        raise ConfigError("api.tls_cert and api.tls_key: give both or neither")
    for what, p in (("api.tls_cert", cert), ("api.tls_key", key)):
        if p is not None and not p.is_file():
            raise ConfigError(f"{what}: no such file {p}")
    metrics = _section(doc, "metrics", _METRICS)
    replication = _section(doc, "replication", _REPLICATION)
    secret = replication.get("secret_file")
    peers_doc = doc.get("peers") or {}
    if not isinstance(peers_doc, dict):
        raise ConfigError("peers: must be a mapping of node names to agent URLs")
    peers: dict[str, str] = {}
    for peer, url in peers_doc.items():
        key_name = f"peers.{peer}"
        if not isinstance(peer, str) or not NAME_RE.match(peer):
            raise ConfigError(f"{key_name}: not a valid node name")
        if peer == name:
            raise ConfigError(f"{key_name}: is this node itself")
        url = _str(url, key_name)
        if not re.match(r"^https?://[^/\s]+/?$", url):
            raise ConfigError(f"{key_name}: {url!r} must be http(s)://HOST:PORT")
        peers[peer] = url.rstrip("/")
    return NodeConfig(
        name=name,
        state_dir=state_dir,
        token_file=_path(api["token_file"], "api.token_file"),
        address=address,
        api_listen=_listen(api.get("listen"), "api.listen", "0.0.0.0:6060"),
        tls_cert=cert,
        tls_key=key,
        ca_file=_path(api["ca_file"], "api.ca_file") if api.get("ca_file") is not None else None,
        metrics_listen=_listen(metrics.get("listen"), "metrics.listen", "0.0.0.0:9500"),
        peers=peers,
        secret_file=_path(secret, "replication.secret_file") if secret is not None else None,
        source=source,
    )


def load(path: Path) -> NodeConfig:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the node file {path}: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    config = parse(doc, path)
    read_token(config.token_file)  # fail at start, not at the first request
    return config
