"""CHAP authentication for iSCSI login (RFC 1994 as profiled by RFC 7143, 12.1.3).

The target issues a challenge; the initiator answers H(id || secret || challenge).  With
mutual CHAP the initiator challenges the target in its answer.  Secrets come from a file
(``load_chap_file``) and are never logged or shown in errors.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

# CHAP_A algorithm numbers from IANA's PPP authentication algorithms registry: 5 is MD5
# (the one RFC 7143 requires), 7 is SHA-256.  We take the first of the initiator's list.
ALGORITHMS = {5: "md5", 7: "sha256"}
MIN_SECRET_LEN = 12  # RFC 7143: at least 96 bits


class ChapError(Exception):
    """Authentication failed; the message is safe to log (no secrets)."""


@dataclass(frozen=True)
class ChapConfig:
    username: str
    secret: bytes = field(repr=False)
    target_username: str | None = None
    target_secret: bytes | None = field(default=None, repr=False)

    @property
    def mutual(self) -> bool:
        return self.target_secret is not None


def load_chap_file(path: str | os.PathLike[str]) -> ChapConfig:
    """Read ``key=value`` lines: username, secret, and optionally target_username and
    target_secret for mutual CHAP.  Raises ValueError naming the problem (never the
    secret)."""
    values: dict[str, str] = {}
    allowed = {"username", "secret", "target_username", "target_secret"}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"{path}:{n}: expected key=value")
        if key not in allowed:
            raise ValueError(f"{path}:{n}: unknown key {key!r} (allowed: {sorted(allowed)})")
        values[key] = value.strip()
    for required in ("username", "secret"):
        if not values.get(required):
            raise ValueError(f"{path}: {required} is missing")
    if ("target_secret" in values) != ("target_username" in values):
        raise ValueError(f"{path}: mutual CHAP needs both target_username and target_secret")
    for key in ("secret", "target_secret"):
        if key in values and len(values[key]) < MIN_SECRET_LEN:
            raise ValueError(f"{path}: {key} must be at least {MIN_SECRET_LEN} characters")
    if values.get("target_secret") and values["target_secret"] == values["secret"]:
        raise ValueError(f"{path}: target_secret must differ from secret")
    ts = values.get("target_secret")
    return ChapConfig(
        username=values["username"],
        secret=values["secret"].encode(),
        target_username=values.get("target_username"),
        target_secret=ts.encode() if ts else None,
    )


def chap_response(algorithm: int, ident: int, secret: bytes, challenge: bytes) -> bytes:
    h = hashlib.new(ALGORITHMS[algorithm])
    h.update(bytes((ident,)))
    h.update(secret)
    h.update(challenge)
    return h.digest()


def choose_algorithm(offered: str) -> int | None:
    for item in offered.split(","):
        item = item.strip()
        if item.isdigit() and int(item) in ALGORITHMS:
            return int(item)
    return None


class ChapExchange:
    """The target side of one CHAP exchange."""

    def __init__(self, config: ChapConfig) -> None:
        self.config = config
        self.algorithm: int | None = None
        self.ident = 0
        self.challenge = b""

    def start(self, offered_algorithms: str) -> list[tuple[str, str]]:
        alg = choose_algorithm(offered_algorithms)
        if alg is None:
            raise ChapError(f"no supported CHAP algorithm in {offered_algorithms!r}")
        self.algorithm = alg
        self.ident = os.urandom(1)[0]
        self.challenge = os.urandom(16 if alg == 5 else 32)
        return [
            ("CHAP_A", str(alg)),
            ("CHAP_I", str(self.ident)),
            ("CHAP_C", "0x" + self.challenge.hex()),
        ]

    def verify(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        """Check the initiator's answer; return the keys of the target's answer (mutual)."""
        from cairn.iscsi.text import decode_binary, parse_number

        if self.algorithm is None:
            raise ChapError("CHAP response before the challenge")
        name = keys.get("CHAP_N")
        resp = keys.get("CHAP_R")
        if name is None or resp is None:
            raise ChapError("CHAP_N or CHAP_R missing")
        try:
            got = decode_binary(resp)
        except ValueError as e:
            raise ChapError("CHAP_R is malformed") from e
        want = chap_response(self.algorithm, self.ident, self.config.secret, self.challenge)
        # compare both to keep timing independent of which one is wrong
        name_ok = hmac.compare_digest(name.encode(), self.config.username.encode())
        resp_ok = hmac.compare_digest(got, want)
        if not (name_ok and resp_ok):
            raise ChapError(f"CHAP failed for name {name!r}")
        if "CHAP_I" not in keys and "CHAP_C" not in keys:
            return []
        if not self.config.mutual or self.config.target_secret is None:
            raise ChapError("initiator asked for mutual CHAP but the target has no secret")
        try:
            ident = parse_number(keys["CHAP_I"])
            challenge = decode_binary(keys["CHAP_C"])
        except (KeyError, ValueError) as e:
            raise ChapError("mutual CHAP_I or CHAP_C missing or malformed") from e
        if not 0 <= ident <= 255 or not challenge:
            raise ChapError("mutual CHAP_I or CHAP_C out of range")
        if challenge == self.challenge:
            raise ChapError("initiator reflected the target's challenge")
        answer = chap_response(self.algorithm, ident, self.config.target_secret, challenge)
        return [("CHAP_N", self.config.target_username or ""), ("CHAP_R", "0x" + answer.hex())]
