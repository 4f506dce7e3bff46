"""Conformance: random sequences of operations against a model (hypothesis)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .conftest import Harness, StoreKind
from .test_io import read_via_extents

NUM_BLOCKS = 48

# Per block: (seq, contents) with contents None when never written or unmapped.
Model = dict[int, tuple[int, bytes | None]]


def make_machine(kind: StoreKind, tmp_root: Path) -> type[RuleBasedStateMachine]:
    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.dir = Path(tempfile.mkdtemp(dir=tmp_root))
            self.harness = Harness(kind, self.dir / "pool")
            self.vol: Any = None
            self.bs = 512
            self.seq = 0
            self.model: Model = {}
            self.snaps: dict[str, Model] = {}
            self.snap_count = 0

        @initialize(bs=st.sampled_from([512, 4096]))
        def create(self, bs: int) -> None:
            self.bs = bs
            self.vol = self.harness.create(NUM_BLOCKS * bs, bs)

        def expected(self, model: Model, lba: int, count: int) -> bytes:
            out = []
            for b in range(lba, lba + count):
                data = model.get(b, (0, None))[1]
                out.append(data if data is not None else bytes(self.bs))
            return b"".join(out)

        @rule(
            lba=st.integers(0, NUM_BLOCKS - 1),
            count=st.integers(1, 12),
            fill=st.integers(1, 255),
        )
        def write(self, lba: int, count: int, fill: int) -> None:
            count = min(count, NUM_BLOCKS - lba)
            self.seq += 1
            blocks = [bytes([fill, b % 256]) * (self.bs // 2) for b in range(lba, lba + count)]
            self.vol.write(lba, b"".join(blocks), self.seq)
            for i, data in enumerate(blocks):
                self.model[lba + i] = (self.seq, data)

        @rule(lba=st.integers(0, NUM_BLOCKS - 1), count=st.integers(1, 12))
        def unmap(self, lba: int, count: int) -> None:
            count = min(count, NUM_BLOCKS - lba)
            self.seq += 1
            self.vol.unmap(lba, count, self.seq)
            for b in range(lba, lba + count):
                self.model[b] = (self.seq, None)

        @rule(lba=st.integers(0, NUM_BLOCKS - 1), count=st.integers(1, NUM_BLOCKS))
        def read(self, lba: int, count: int) -> None:
            count = min(count, NUM_BLOCKS - lba)
            want = self.expected(self.model, lba, count)
            assert self.vol.read(lba, count) == want
            assert read_via_extents(self.vol, lba, count) == want
            status = self.vol.lba_status(lba, count)
            first_dealloc = self.model.get(lba, (0, None))[1] is None
            assert status.lba == lba and status.deallocated == first_dealloc
            for b in range(lba, lba + status.count):
                assert (self.model.get(b, (0, None))[1] is None) == first_dealloc
            end = lba + status.count
            if end < lba + count:
                assert (self.model.get(end, (0, None))[1] is None) != first_dealloc

        @precondition(lambda self: len(self.snaps) < 4)
        @rule()
        def snapshot(self) -> None:
            self.snap_count += 1
            name = f"s{self.snap_count}"
            self.vol.snapshot_create(name)
            self.snaps[name] = dict(self.model)

        @precondition(lambda self: bool(self.snaps))
        @rule(data=st.data())
        def check_snapshot(self, data: st.DataObject) -> None:
            name = data.draw(st.sampled_from(sorted(self.snaps)))
            model = self.snaps[name]
            snap = self.vol.snapshot_open(name)
            assert snap.read(0, NUM_BLOCKS) == self.expected(model, 0, NUM_BLOCKS)
            assert snap.block_seqs(0, NUM_BLOCKS) == [
                model.get(b, (0, None))[0] for b in range(NUM_BLOCKS)
            ]

        @precondition(lambda self: bool(self.snaps))
        @rule(data=st.data())
        def delete_snapshot(self, data: st.DataObject) -> None:
            name = data.draw(st.sampled_from(sorted(self.snaps)))
            self.vol.snapshot_delete(name)
            del self.snaps[name]

        @rule()
        def reopen(self) -> None:
            self.vol = self.harness.reopen(self.vol)

        @invariant()
        def seqs_match(self) -> None:
            if self.vol is None:
                return
            assert self.vol.high_seq == self.seq
            assert self.vol.block_seqs(0, NUM_BLOCKS) == [
                self.model.get(b, (0, None))[0] for b in range(NUM_BLOCKS)
            ]

        def teardown(self) -> None:
            self.harness.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    return StoreMachine


def test_store_matches_model(store_kind: StoreKind, tmp_path: Path) -> None:
    machine = make_machine(store_kind, tmp_path)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
