"""The shared secret of a pool server and its clients (the targets).

The file holds the secret as its whole content; surrounding whitespace is ignored.  The
secret itself never appears in a message or a log line: only proofs of it
(``cairn.replication.wire.client_proof`` and ``server_proof``) cross the network.
"""

from __future__ import annotations

from pathlib import Path


class SecretError(ValueError):
    """The secret file cannot be used; the message names the file, never its content."""


def load_secret(path: str | Path) -> bytes:
    path = Path(path)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    if not secret:
        raise SecretError(f"the secret file {path} is empty")
    return secret
