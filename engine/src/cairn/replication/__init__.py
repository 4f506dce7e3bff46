"""Replication: every write of a volume goes to N replicas on pools of other hosts.

``wire`` is the protocol between a target and the pool servers that hold its replicas
(sans-IO codec, docs/replication.md); the pool server itself is ``cairn.pool``.
"""
