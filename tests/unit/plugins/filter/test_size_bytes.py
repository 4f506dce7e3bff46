from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.cairn.storage.plugins.filter.size_bytes import FilterModule, size_bytes


def test_sizes_as_the_agent_reads_them():
    assert size_bytes("10G") == 10 << 30
    assert size_bytes("10GiB") == 10 << 30
    assert size_bytes("512M") == 512 << 20
    assert size_bytes(4096) == 4096
    assert size_bytes("4096") == 4096


def test_bad_sizes_say_why():
    with pytest.raises(AnsibleFilterError, match="size_bytes: size 'ten' is not a number"):
        size_bytes("ten")
    with pytest.raises(AnsibleFilterError, match="positive"):
        size_bytes(0)
    with pytest.raises(AnsibleFilterError, match="not a number of bytes"):
        size_bytes(True)


def test_registered_as_a_filter():
    assert FilterModule().filters()["size_bytes"] is size_bytes
