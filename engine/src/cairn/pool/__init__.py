"""A pool of this host's storage and the server that lends its replicas to targets.

``server`` is ``cairn pool serve``: the replication protocol (``cairn.replication.wire``)
over TCP in front of an embedded store.  ``client`` is a small blocking client for tests
and tools.
"""
