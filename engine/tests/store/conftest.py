"""Fixtures of the store conformance suite.

Every test here runs against each kind of store in ``STORE_KINDS``.  A kind is a pool
class constructed from a directory (``Pool(path)``) with the pool API of
``cairn.store.EmbeddedPool``: ``create_volume``, ``open_volume``, ``open_or_create``,
``list_volumes``, ``delete_volume``, ``clone``; its volumes implement
``cairn.blockdev.ReplicaStore`` plus the snapshot API.  To add a store, add a kind.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class StoreKind:
    name: str
    #: "module:Class" of the pool; a subprocess rebuilds the pool from it and a path.
    pool_class: str

    def open_pool(self, path: Path) -> Any:
        module, cls = self.pool_class.split(":")
        return getattr(importlib.import_module(module), cls)(path)


STORE_KINDS = [StoreKind("embedded", "cairn.store.embedded:EmbeddedPool")]


class Harness:
    """One pool of one kind in a temporary directory, reopenable."""

    def __init__(self, kind: StoreKind, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.pool = kind.open_pool(path)
        self._names = itertools.count()

    def new_name(self) -> str:
        return f"vol{next(self._names)}"

    def create(self, size_bytes: int = 4 << 20, block_size: int = 512) -> Any:
        return self.pool.create_volume(self.new_name(), size_bytes, block_size)

    def reopen(self, volume: Any) -> Any:
        """Close ``volume``, close and reopen the pool, open the volume again."""
        name = volume.name
        volume.close()
        self.pool.close()
        self.pool = self.kind.open_pool(self.path)
        return self.pool.open_volume(name)

    def close(self) -> None:
        self.pool.close()


@pytest.fixture(params=STORE_KINDS, ids=lambda k: k.name)
def store_kind(request: pytest.FixtureRequest) -> StoreKind:
    kind: StoreKind = request.param
    return kind


@pytest.fixture
def harness(store_kind: StoreKind, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(store_kind, tmp_path / "pool")
    yield h
    h.close()


@pytest.fixture
def store_factory(harness: Harness) -> Callable[..., Any]:
    """``store_factory(size_bytes=4 MiB, block_size=512)``: a fresh, open volume."""
    return harness.create
