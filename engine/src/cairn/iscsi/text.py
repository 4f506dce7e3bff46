"""iSCSI text keys (RFC 7143, section 6): ``key=value`` pairs separated by NUL."""

from __future__ import annotations

MAX_KEY_LEN = 63
MAX_VALUE_LEN = 8192  # large binary CHAP values may exceed 255; cap what we accept


class TextError(Exception):
    """Malformed key=value text: a protocol error."""


def parse_text(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Split a data segment into (key, value) pairs, in order.

    Raises ``TextError`` for a pair without ``=``, an empty or over-long key, bytes that
    are not UTF-8, or a key given twice.
    """
    raw = bytes(data)
    if not raw:
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError("text is not UTF-8") from e
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in text.split("\0"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise TextError(f"text item {item[:40]!r} has no '='")
        if not key or len(key) > MAX_KEY_LEN:
            raise TextError(f"bad key {key[:70]!r}")
        if len(value) > MAX_VALUE_LEN:
            raise TextError(f"value of {key} is too long")
        if key in seen:
            raise TextError(f"key {key} given twice")
        seen.add(key)
        pairs.append((key, value))
    return pairs


def encode_text(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def parse_number(value: str) -> int:
    """A decimal or 0x-hex number; raises ValueError otherwise."""
    if value.lower().startswith("0x"):
        return int(value[2:], 16)
    if not value.isdigit():
        raise ValueError(value)
    return int(value)


def decode_binary(value: str) -> bytes:
    """A binary value in hex (0x...) or base64 (0b...) form (RFC 7143, 6.1)."""
    import base64
    import binascii

    if len(value) < 3 or value[0] != "0":
        raise ValueError("binary value must start with 0x or 0b")
    kind, body = value[1].lower(), value[2:]
    try:
        if kind == "x":
            if len(body) % 2:
                body = "0" + body
            return bytes.fromhex(body)
        if kind == "b":
            return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error) as e:
        raise ValueError("malformed binary value") from e
    raise ValueError("binary value must start with 0x or 0b")
