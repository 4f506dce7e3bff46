"""The volume role's placement: one replica per node, round the nodes in inventory order."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.cairn.storage.plugins.filter.place_replicas import (
    FilterModule,
    place_replicas,
)


def pools(*pairs):
    return [{"node": n, "pool": p} for n, p in pairs]


def test_one_replica_per_node_in_inventory_order():
    got = place_replicas(pools(("b", "p1"), ("a", "p1"), ("a", "p2"), ("c", "p1")), 3)
    assert got == ["b/p1", "a/p1", "c/p1"]


def test_fewer_replicas_than_nodes_takes_the_first_nodes():
    assert place_replicas(pools(("a", "p1"), ("b", "p1"), ("c", "p1")), 2) == ["a/p1", "b/p1"]


def test_too_few_nodes_is_refused_with_what_there_is():
    with pytest.raises(AnsibleFilterError) as e:
        place_replicas(pools(("a", "p1"), ("a", "p2"), ("b", "p1")), 3)
    msg = str(e.value)
    assert "3 replicas on different nodes" in msg
    assert "a (p1, p2), b (p1)" in msg
    assert "allow_same_node" in msg


def test_same_node_allowed_goes_round_again():
    got = place_replicas(
        pools(("local", "pool1"), ("local", "pool2"), ("local", "pool3")), 3, allow_same_node=True
    )
    assert got == ["local/pool1", "local/pool2", "local/pool3"]
    got = place_replicas(pools(("a", "p1"), ("a", "p2"), ("b", "p1")), 3, allow_same_node=True)
    assert got == ["a/p1", "b/p1", "a/p2"]


def test_not_enough_pools_even_on_one_node():
    with pytest.raises(AnsibleFilterError, match="only 2 pool"):
        place_replicas(pools(("a", "p1"), ("a", "p2")), 3, allow_same_node=True)


def test_duplicates_count_once_and_bad_input_is_named():
    assert place_replicas(pools(("a", "p1"), ("a", "p1"), ("b", "p1")), 2) == ["a/p1", "b/p1"]
    with pytest.raises(AnsibleFilterError, match="dict with node and pool"):
        place_replicas([{"node": "a"}], 1)
    with pytest.raises(AnsibleFilterError, match="NODE/POOL"):
        place_replicas(["a/"], 1)


def test_node_slash_pool_strings():
    assert place_replicas(["a/p1", "a/p2", "b/p1"], 2) == ["a/p1", "b/p1"]
    with pytest.raises(AnsibleFilterError, match="at least 1"):
        place_replicas(pools(("a", "p1")), 0)
    with pytest.raises(AnsibleFilterError, match="integer"):
        place_replicas(pools(("a", "p1")), "three")


def test_registered_as_a_filter():
    assert FilterModule().filters()["place_replicas"] is place_replicas
