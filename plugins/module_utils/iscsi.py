# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""open-iscsi's files and ``iscsiadm`` output as the ``iscsi_initiator`` module uses them.

Pure text functions (no I/O) so that every branch has a unit test:

- ``initiatorname.iscsi``: ``InitiatorName=iqn....`` among comments;
- ``iscsid.conf`` and the node / discovery records of the iscsiadm database: lines
  ``key = value`` among comments; ``set_settings`` changes the given keys and keeps every
  other line (comments included) where it was;
- ``iscsiadm -m session -P 1`` and ``iscsiadm -m node ...`` output.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

SECRET_KEY_RE = re.compile(r"password", re.IGNORECASE)
MASK = "********"
END_RECORD = "# END RECORD"
EMPTY = "<empty>"

_SETTING_RE = re.compile(r"^\s*([^#=\s][^=]*?)\s*=\s*(.*?)\s*$")
_NAME_LINE_RE = re.compile(r"^\s*InitiatorName\s*=\s*(\S*)\s*$")


def is_secret(key):
    return bool(SECRET_KEY_RE.search(key))


def masked(settings):
    """``settings`` with every password replaced by ``********`` (for diffs and results)."""
    return dict(
        (k, MASK if is_secret(k) and v not in ("", EMPTY) else v) for k, v in settings.items()
    )


def normalize_portal(portal):
    """``HOST`` or ``HOST:PORT`` (``[V6]:PORT``) -> ``HOST:PORT`` (port 3260 by default)."""
    portal = portal.strip()
    if portal.startswith("["):
        host, sep, rest = portal[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("portal %r is not [ADDRESS]:PORT" % portal)
        port = rest[1:] or "3260"
        host = "[%s]" % host
    elif portal.count(":") == 1:
        host, port = portal.split(":")
    elif ":" in portal:
        raise ValueError("portal %r: write an IPv6 address as [ADDRESS]:PORT" % portal)
    else:
        host, port = portal, "3260"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("portal %r is not HOST:PORT" % portal)
    return "%s:%s" % (host, int(port))


def portal_parts(portal):
    """``HOST:PORT`` -> (``HOST`` without brackets, ``PORT``)."""
    host, dummy, port = portal.rpartition(":")
    return host.strip("[]"), port


def setting_value(value):
    """An option value as open-iscsi writes it (booleans as Yes/No)."""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    return str(value)


# ---- initiatorname.iscsi -------------------------------------------------------------


def read_initiator_name(text):
    """The InitiatorName of an ``initiatorname.iscsi`` text, or None."""
    for line in text.splitlines():
        m = _NAME_LINE_RE.match(line)
        if m:
            return m.group(1)
    return None


def set_initiator_name(text, name):
    """``text`` with its InitiatorName line set to ``name``; comments kept."""
    lines = text.splitlines()
    out = []
    done = False
    for line in lines:
        if _NAME_LINE_RE.match(line):
            if not done:
                out.append("InitiatorName=%s" % name)
                done = True
            continue
        out.append(line)
    if not done:
        out.append("InitiatorName=%s" % name)
    return "\n".join(out) + "\n"


# ---- key = value files: iscsid.conf, node and discovery records ----------------------


def parse_settings(text):
    """Every active ``key = value`` line of ``text`` (the last one wins, as in open-iscsi)."""
    out = {}
    for line in text.splitlines():
        m = _SETTING_RE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def set_settings(text, settings):
    """``text`` with each key of ``settings`` set to its value.

    An active line of the key is rewritten in place (later duplicates are dropped); a key
    that is only commented out (``# key = value``) is added after its last commented line;
    any other key goes before ``# END RECORD`` when the text has one, else at the end.
    Every other line, comments included, is kept as it was."""
    lines = text.splitlines()
    pending = dict(settings)
    out = []
    seen = set()
    for line in lines:
        m = _SETTING_RE.match(line)
        if m and m.group(1) in settings:
            key = m.group(1)
            if key in seen:
                continue
            seen.add(key)
            pending.pop(key, None)
            out.append("%s = %s" % (key, settings[key]))
            continue
        out.append(line)
    # keys only present as comments: after their last commented line
    for key in list(pending):
        commented = re.compile(r"^\s*#+\s*%s\s*=" % re.escape(key))
        where = [i for i, line in enumerate(out) if commented.match(line)]
        if where:
            out.insert(where[-1] + 1, "%s = %s" % (key, pending.pop(key)))
    if pending:
        rest = ["%s = %s" % (k, v) for k, v in pending.items()]
        ends = [i for i, line in enumerate(out) if line.strip() == END_RECORD]
        if ends:
            out[ends[-1] : ends[-1]] = rest
        else:
            out.extend(rest)
    return "\n".join(out) + "\n"


def changed_settings(current, wanted):
    """The keys of ``wanted`` whose value differs from ``current`` (``<empty>`` is "")."""
    out = {}
    for key, value in wanted.items():
        have = current.get(key)
        if have == EMPTY:
            have = ""
        if have != value:
            out[key] = value
    return out


# ---- iscsiadm output -------------------------------------------------------------------


def parse_record(text):
    """``iscsiadm -m node -T IQN -p PORTAL -I IFACE`` (or ``-m iface -I NAME``) output."""
    return parse_settings("\n".join(line for line in text.splitlines() if not line.startswith("#")))


def parse_node_list(text):
    """``iscsiadm -m node`` / discovery output -> [{"portal", "tpgt", "target"}]."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\S+):(\d+),(-?\d+)\s+(\S+)\s*$", line)
        if m:
            out.append(
                {
                    "portal": "%s:%s" % (m.group(1), m.group(2)),
                    "tpgt": int(m.group(3)),
                    "target": m.group(4),
                }
            )
    return out


def parse_sessions(text):
    """``iscsiadm -m session -P 1`` output -> [{"target", "portal", "iface", "sid", "state"}].

    ``portal`` is the persistent portal (the one of the node record, which a login names)."""
    out = []
    target = None
    cur = None
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^Target:\s*(\S+)", s)
        if m:
            target = m.group(1)
            continue
        m = re.match(r"^(Current|Persistent) Portal:\s*(\S+?),(-?\d+)$", s)
        if m and target:
            if m.group(1) == "Current":
                cur = {
                    "target": target,
                    "portal": m.group(2),
                    "iface": None,
                    "sid": None,
                    "state": None,
                }
                out.append(cur)
            elif cur is not None:
                cur["portal"] = m.group(2)
            continue
        if cur is None:
            continue
        m = re.match(r"^Iface Name:\s*(\S+)$", s)
        if m:
            cur["iface"] = m.group(1)
        m = re.match(r"^SID:\s*(\d+)$", s)
        if m:
            cur["sid"] = int(m.group(1))
        m = re.match(r"^iSCSI Session State:\s*(\S+)$", s)
        if m:
            cur["state"] = m.group(1)
    return out


def by_path(portal, target, lun):
    """The udev name of a LUN of an iSCSI session, in ``/dev/disk/by-path``."""
    return "ip-%s-iscsi-%s-lun-%d" % (portal, target, lun)
