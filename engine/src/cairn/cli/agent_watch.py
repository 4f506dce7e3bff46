"""``cairn volume watch NAME``: a volume's rebuilds as a progress bar with an ETA (the
target's status document, through the agent), until the volume is healthy."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cairn.agent.client import AgentClient
from cairn.cli.agentcmds import command, console, emit_json, size


def add_action(vsub: Any) -> None:
    p = command(vsub, "watch", watch, "follow a volume's rebuild until it is healthy")
    p.add_argument("name")
    p.add_argument("--once", action="store_true", help="print one line and exit")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="give up after this many seconds (exit 1; 0: never)",
    )


def progress(st: dict[str, Any]) -> tuple[int, int, float, float | None, list[str]]:
    """``(done, total, rate, eta_s, sources)`` over the replicas being rebuilt."""
    done = total = 0
    rate = 0.0
    eta: float | None = None
    sources = []
    for r in st.get("replicas", []):
        rb = r.get("rebuild")
        if not rb:
            continue
        done += int(rb.get("done_bytes") or 0)
        total += int(rb.get("total_bytes") or 0)
        rate += float(rb.get("rate_bytes_per_s") or 0)
        if rb.get("eta_s") is not None:
            eta = max(eta or 0.0, float(rb["eta_s"]))
        sources.append(f"{r['address']} from {rb.get('source')}")
    return done, total, rate, eta, sources


def line(name: str, st: dict[str, Any]) -> str:
    states = ", ".join(f"{r['address']} {r['state']}" for r in st.get("replicas", []))
    done, total, rate, eta, sources = progress(st)
    text = f"volume {name}: {st.get('state')} ({states})"
    if sources:
        pct = f"{100 * done / total:.0f}%" if total else "scanning"
        text += (
            f"; rebuild {pct} ({size(done)} of {size(total)} at {size(rate)}/s"
            f"{f', ETA {eta:.0f} s' if eta is not None else ''}): "
            f"{'; '.join(sources)}"
        )
    return text


def watch(args: argparse.Namespace, api: AgentClient) -> int:
    path = f"/v1/volumes/{args.name}/status"
    st = api.call("GET", path)
    if args.once:
        emit_json(st) if args.json else print(line(args.name, st))
        return 0
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    deadline = time.monotonic() + args.timeout if args.timeout else None
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
    )
    seen = 0  # the largest total of a rebuild seen: the bar's end
    with Progress(*columns, console=console(), transient=False) as bar:
        task = bar.add_task(f"{args.name} rebuild", total=None, eta="-")
        while st.get("state") != "healthy":
            done, total, _rate, eta, _src = progress(st)
            seen = max(seen, total)
            shown = f"{eta:.0f} s" if eta is not None else "-"
            bar.update(task, completed=done, total=total or None, eta=shown)
            if deadline is not None and time.monotonic() > deadline:
                bar.console.print(line(args.name, st))
                return 1
            time.sleep(args.interval)
            st = api.call("GET", path)
        if seen:
            bar.update(task, completed=seen, total=seen, eta="0 s")
        else:  # no rebuild seen (done before the first look, or none): no bar
            bar.remove_task(task)
    print(line(args.name, st))
    return 0
