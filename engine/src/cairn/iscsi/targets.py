"""What the login needs to know about the targets behind a portal."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from cairn.iscsi.chap import ChapConfig

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Acl:
    """Initiators admitted by IQN and by source network; an empty list admits all."""

    iqns: frozenset[str] = frozenset()
    networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: list[str]) -> Acl:
        iqns: set[str] = set()
        nets: list[IpNetwork] = []
        for entry in entries:
            entry = entry.strip()
            if entry.startswith(("iqn.", "eui.", "naa.")):
                iqns.add(entry.lower())
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as e:
                raise ValueError(
                    f"ACL entry {entry!r} is neither an initiator name (iqn., eui., naa.) "
                    "nor an address or network (CIDR)"
                ) from e
        return cls(frozenset(iqns), tuple(nets))

    def admits(self, initiator: str, address: str | None) -> bool:
        if self.iqns and initiator.lower() not in self.iqns:
            return False
        if self.networks:
            if address is None:
                return False
            try:
                ip = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            return any(ip in net for net in self.networks)
        return True


@dataclass(frozen=True)
class TargetSpec:
    iqn: str
    chap: ChapConfig | None = None
    acl: Acl = field(default_factory=Acl)
    tpgt: int = 1
    alias: str | None = None


class TargetDirectory(Protocol):
    """The targets reachable through one portal."""

    portal: str  # "host:port" as initiators should dial it

    def lookup(self, iqn: str) -> TargetSpec | None: ...

    def targets(self) -> list[TargetSpec]: ...

    def unavailable(self, iqn: str) -> str | None:
        """Why a new session to ``iqn`` is refused for now (a rollback runs), or None."""
        ...

    @property
    def discovery_chap(self) -> ChapConfig | None: ...


@dataclass
class StaticDirectory:
    portal: str
    specs: dict[str, TargetSpec]
    discovery_chap: ChapConfig | None = None
    #: targets that refuse new sessions for now, with the reason (``fence``)
    fenced: dict[str, str] = field(default_factory=dict)

    def lookup(self, iqn: str) -> TargetSpec | None:
        return self.specs.get(iqn.lower())

    def unavailable(self, iqn: str) -> str | None:
        return self.fenced.get(iqn.lower())

    def fence(self, iqn: str, reason: str | None) -> None:
        """Refuse new sessions to ``iqn`` with ``reason`` (None: admit them again)."""
        if reason is None:
            self.fenced.pop(iqn.lower(), None)
        else:
            self.fenced[iqn.lower()] = reason

    def targets(self) -> list[TargetSpec]:
        return list(self.specs.values())


def send_targets(
    directory: TargetDirectory, initiator: str, address: str | None, which: str
) -> list[tuple[str, str]]:
    """The answer to ``SendTargets=All`` (or a name): only targets the initiator may use."""
    out: list[tuple[str, str]] = []
    for spec in directory.targets():
        if which not in ("All", "", spec.iqn):
            continue
        if not spec.acl.admits(initiator, address):
            continue
        out.append(("TargetName", spec.iqn))
        out.append(("TargetAddress", f"{format_portal(directory.portal)},{spec.tpgt}"))
    return out


def format_portal(portal: str) -> str:
    host, _, port = portal.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
