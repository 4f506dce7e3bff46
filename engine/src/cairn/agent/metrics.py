"""Prometheus metrics of the node (``GET /metrics`` on 9500), in the spirit of cStor's
volume exporter: read at each scrape from the targets' status documents and from what
the agent knows of its pools and children.

Volumes: ``cairn_volume_reads_total``, ``..._writes_total``, ``..._read_bytes_total``,
``..._write_bytes_total``, ``cairn_volume_size_bytes``, ``cairn_volume_status`` (one
series per state, 1 for the current one), ``cairn_volume_up`` (the target answers),
``cairn_volume_replicas`` by state (healthy, degraded) and ``..._replicas_total``,
``cairn_volume_writable``, ``cairn_volume_held_writes``, the time reads and writes took
in all (``cairn_volume_read_time_seconds_total``, ``..._write_...``: their rate over the
rate of ``..._reads_total`` is the mean latency), ``cairn_volume_used_bytes`` (the largest
replica's).
Replicas: ``cairn_replica_status`` (per state), ``cairn_replica_inflight``,
``cairn_replica_used_bytes`` (asked of the pool servers with INFO at each scrape),
``cairn_replica_rebuild_done_bytes``, ``..._total_bytes``, ``..._progress`` (0..1).
Pools: ``cairn_pool_up``, ``cairn_pool_capacity_bytes``, ``..._used_bytes``,
``..._free_bytes``.  Children: ``cairn_child_restarts_total``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cairn.agent.client import ApiError, target_request
from cairn.agent.ops import Agent, _tcp_open, pool_capacity
from cairn.agent.pool_requests import allocated

VOLUME_STATES = ("healthy", "degraded", "offline", "unknown")
REPLICA_STATES = ("healthy", "degraded", "rebuilding", "offline", "connecting")
METRICS_KEY = web.AppKey("agent", Agent)


async def gather(agent: Agent) -> dict[str, Any]:
    """What one scrape reports: every target's status, every pool's reachability."""
    vols = dict(agent.state.volumes)
    pools = dict(agent.state.pools)

    async def status(vol: dict[str, Any]) -> dict[str, Any] | None:
        try:
            code, doc = await target_request(
                agent.http, vol["status_port"], "GET", "/status", timeout=3
            )
        except ApiError:
            return None
        return doc if code == 200 else None

    async def pool_up(pool: dict[str, Any]) -> bool:
        host, _, port = agent.pool_address(pool).rpartition(":")
        return await _tcp_open(host.strip("[]"), int(port))

    addresses = [a for v in vols.values() for a in v.get("addresses", {}).values()]
    vs, ps, used = await asyncio.gather(
        asyncio.gather(*(status(v) for v in vols.values())),
        asyncio.gather(*(pool_up(p) for p in pools.values())),
        allocated(addresses, agent.config.secret_file),
    )
    return {
        "used": used,
        "volumes": dict(zip(vols, zip(vols.values(), vs, strict=True), strict=True)),
        "pools": dict(zip(pools, zip(pools.values(), ps, strict=True), strict=True)),
        "children": {n: c.info() for n, c in agent.supervisor.children.items()},
    }


class Snapshot:
    """A prometheus_client collector over one ``gather`` result."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
        v = ["volume"]
        up = GaugeMetricFamily("cairn_volume_up", "1 when the volume's target answers", labels=v)
        size = GaugeMetricFamily("cairn_volume_size_bytes", "size of the volume", labels=v)
        vused = GaugeMetricFamily(
            "cairn_volume_used_bytes", "pool space of the volume's largest replica", labels=v
        )
        state = GaugeMetricFamily(
            "cairn_volume_status", "1 for the volume's current state", labels=["volume", "state"]
        )
        writable = GaugeMetricFamily(
            "cairn_volume_writable", "1 while writes reach quorum", labels=v
        )
        held = GaugeMetricFamily("cairn_volume_held_writes", "writes waiting for quorum", labels=v)
        counters = {
            k: CounterMetricFamily(f"cairn_volume_{k}", help_, labels=v)
            for k, help_ in (
                ("reads", "read commands"),
                ("writes", "write commands"),
                ("read_bytes", "bytes read"),
                ("write_bytes", "bytes written"),
                ("read_time_seconds", "time spent in reads"),
                ("write_time_seconds", "time spent in writes"),
            )
        }
        reps = GaugeMetricFamily(
            "cairn_volume_replicas", "replicas by state", labels=["volume", "state"]
        )
        reps_total = GaugeMetricFamily("cairn_volume_replicas_total", "replicas", labels=v)
        r = ["volume", "replica"]
        rstate = GaugeMetricFamily(
            "cairn_replica_status", "1 for the replica's current state", labels=[*r, "state"]
        )
        inflight = GaugeMetricFamily("cairn_replica_inflight", "I/O in flight", labels=r)
        rused = GaugeMetricFamily(
            "cairn_replica_used_bytes", "pool space the replica occupies", labels=r
        )
        rb_done = GaugeMetricFamily(
            "cairn_replica_rebuild_done_bytes", "bytes the running rebuild copied", labels=r
        )
        rb_total = GaugeMetricFamily(
            "cairn_replica_rebuild_total_bytes", "bytes the running rebuild copies", labels=r
        )
        rb_prog = GaugeMetricFamily(
            "cairn_replica_rebuild_progress", "the running rebuild, 0 to 1", labels=r
        )
        used_by_pool = self.data.get("used", {})
        for name, (vol, st) in sorted(self.data["volumes"].items()):
            up.add_metric([name], 1 if st else 0)
            sizes = []
            for rname, address in sorted(vol.get("addresses", {}).items()):
                b = used_by_pool.get(address, {}).get(name)
                if b is not None:
                    rused.add_metric([name, rname], b)
                    sizes.append(b)
            if sizes:
                vused.add_metric([name], max(sizes))
            size.add_metric([name], (st or vol)["size"])
            cur = st["state"] if st else "unknown"
            for s in VOLUME_STATES:
                state.add_metric([name, s], 1 if s == cur else 0)
            if not st:
                reps_total.add_metric([name], len(vol["replicas"]))
                continue
            writable.add_metric([name], 1 if st.get("writable") else 0)
            held.add_metric([name], st.get("held_writes", 0))
            stats = st.get("stats", {})
            for k in ("reads", "writes", "read_bytes", "write_bytes"):
                counters[k].add_metric([name], stats.get(k, 0))
            for k in ("read", "write"):
                if f"{k}_time_us" in stats:
                    counters[f"{k}_time_seconds"].add_metric([name], stats[f"{k}_time_us"] / 1e6)
            replicas = st.get("replicas", [])
            healthy = sum(1 for x in replicas if x.get("state") == "healthy")
            reps.add_metric([name, "healthy"], healthy)
            reps.add_metric([name, "degraded"], len(replicas) - healthy)
            reps_total.add_metric([name], len(replicas))
            by_address = {a: n for n, a in vol.get("addresses", {}).items()}
            for x in replicas:
                rname = by_address.get(x["address"], x["address"])
                states = {*REPLICA_STATES, x.get("state", "unknown")}
                for s in sorted(states):
                    rstate.add_metric([name, rname, s], 1 if s == x.get("state") else 0)
                inflight.add_metric([name, rname], x.get("inflight", 0))
                rb = x.get("rebuild")
                if rb:
                    done, total = rb.get("done_bytes") or 0, rb.get("total_bytes")
                    rb_done.add_metric([name, rname], done)
                    if total:
                        rb_total.add_metric([name, rname], total)
                        rb_prog.add_metric([name, rname], min(done / total, 1.0))
        yield from (up, size, vused, state, writable, held, *counters.values(), reps, reps_total)
        yield from (rstate, inflight, rused, rb_done, rb_total, rb_prog)

        p = ["pool"]
        pup = GaugeMetricFamily("cairn_pool_up", "1 when the pool server answers", labels=p)
        cap = GaugeMetricFamily("cairn_pool_capacity_bytes", "size of the pool", labels=p)
        used = GaugeMetricFamily("cairn_pool_used_bytes", "bytes used in the pool", labels=p)
        free = GaugeMetricFamily("cairn_pool_free_bytes", "bytes free in the pool", labels=p)
        for name, (pool, ok) in sorted(self.data["pools"].items()):
            pup.add_metric([name], 1 if ok else 0)
            if pool.get("backend") == "embedded":
                c = pool_capacity(pool)
                if c:
                    cap.add_metric([name], c["size"])
                    used.add_metric([name], c["used"])
                    free.add_metric([name], c["free"])
        yield from (pup, cap, used, free)

        restarts = CounterMetricFamily(
            "cairn_child_restarts", "restarts of a pool server or target", labels=["child"]
        )
        for name, info in sorted(self.data["children"].items()):
            restarts.add_metric([name], info["restarts"])
        yield restarts


def render(data: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(data))  # type: ignore[arg-type]
    return generate_latest(registry)


async def metrics(request: web.Request) -> web.Response:
    data = await gather(request.app[METRICS_KEY])
    return web.Response(body=render(data), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = agent
    app.router.add_get("/metrics", metrics)
    return app
