#!/usr/bin/env bash
# Start the isolated hosts of one molecule scenario: Debian 12 containers with systemd as
# PID 1, each with its own hostname, address, /etc and /var, on an internal podman network
# that has no route out. The scenario's Ansible inventory reaches them over ssh.
#
#   hosts_up.sh SCENARIO NAME=ADDRESS [NAME=ADDRESS ...]
#   e.g. hosts_up.sh cluster storage1=10.89.78.11 storage2=10.89.78.12 client1=10.89.78.21
#
# The image is built once (debootstrap from the Debian mirror apt uses, then Debian
# packages only) and reused while it exists, so a CI run builds it for its first scenario.
# Knobs: CAIRN_MH_WORK (/tmp/cairn-mh), CAIRN_MH_SUBNET (10.89.78), CAIRN_MH_SUITE (bookworm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=molecule/shared/common.sh
. "$here/common.sh"

scenario=${1:?usage: hosts_up.sh SCENARIO NAME=ADDRESS ...}
shift
[ $# -gt 0 ] || { echo "hosts_up.sh: no hosts given" >&2; exit 2; }

t0=$(date +%s)
log() { echo "[cairn-mh ${scenario} +$(($(date +%s) - t0))s] $*"; }

mh_podman_conf

# 1. The base image: a minimal Debian from debootstrap.
if ! podman image exists "$MH_BASE_IMAGE"; then
  log "debootstrap $MH_SUITE into $MH_BASE_IMAGE"
  rootfs=$MH_WORK/rootfs
  rm -rf "$rootfs"
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  debootstrap --variant=minbase --include=systemd,systemd-sysv,python3,iproute2 \
    "$MH_SUITE" "$rootfs" "$mirror" >"$MH_WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$MH_WORK/debootstrap.log" >&2; exit 1; }
  tar -C "$rootfs" -c . | podman import -q --change CMD=/sbin/init - "$MH_BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

# 2. The host image: the packages every scenario host needs, and two fixes for containers.
if ! podman image exists "$MH_IMAGE"; then
  log "building $MH_IMAGE"
  build=$MH_WORK/build
  rm -rf "$build"
  mkdir -p "$build"
  # Debian's zfs-fuse service script exits 3 in a container: it cannot lower its OOM score
  # (no CAP_SYS_RESOURCE). Run the daemon in the foreground under systemd instead.
  cat >"$build/zfs-fuse.conf" <<'CONF'
[Service]
Type=simple
ExecStart=
ExecStart=/usr/sbin/zfs-fuse --no-daemon --no-kstat-mount --pidfile /run/zfs-fuse.pid
ExecStartPost=/bin/sh -c 'i=0; until zpool list >/dev/null 2>&1 || [ $i -ge 40 ]; do i=$((i+1)); sleep 0.25; done; zfs mount -a || true'
ExecStop=
ExecStop=/bin/sh -c 'sync; zfs unmount -a || true'
RemainAfterExit=no
CONF
  # Host keys are made at first boot, so that each host has its own.
  printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    >"$build/ssh.conf"
  cat >"$build/Containerfile" <<CONF
FROM $MH_BASE_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $MH_PACKAGES \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \\
 && : >/etc/machine-id \\
 && systemctl mask iscsid.socket iscsid.service open-iscsi.service
COPY zfs-fuse.conf /etc/systemd/system/zfs-fuse.service.d/10-container.conf
COPY ssh.conf /etc/systemd/system/ssh.service.d/10-hostkeys.conf
CMD ["/sbin/init"]
CONF
  podman build -q -t "$MH_IMAGE" "$build" >"$MH_WORK/build.log" 2>&1 \
    || { tail -30 "$MH_WORK/build.log" >&2; exit 1; }
  rm -rf "$build"
fi

# 3. The controller's key for the ssh inventory.
mkdir -p "$MH_WORK/ssh"
[ -f "$MH_WORK/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cairn-mh -f "$MH_WORK/ssh/id_ed25519"

# 4. The internal network: no NAT and no way out; this machine is .1 on it.
if ! podman network exists "$MH_NETWORK"; then
  podman network create --internal --subnet "$MH_SUBNET.0/24" --gateway "$MH_SUBNET.1" \
    --label "$MH_LABEL=1" "$MH_NETWORK" >/dev/null
fi

# 5. The hosts.
addhosts=()
for spec in "$@"; do addhosts+=(--add-host "${spec%%=*}:${spec#*=}"); done
for spec in "$@"; do
  name=${spec%%=*}
  addr=${spec#*=}
  ctr=$MH_PREFIX-$name
  if podman container exists "$ctr"; then
    podman start "$ctr" >/dev/null
  else
    podman run -d --name "$ctr" --hostname "$name" \
      --label "$MH_LABEL=1" --label "$MH_LABEL.scenario=$scenario" \
      --network "$MH_NETWORK" --ip "$addr" "${addhosts[@]}" \
      --device /dev/fuse --cap-add SYS_ADMIN --cap-add IPC_LOCK \
      -v "$MH_WORK/ssh/id_ed25519.pub:/root/.ssh/authorized_keys:ro" \
      "$MH_IMAGE" /sbin/init >/dev/null
  fi
  mh_default_route "$ctr"
  mh_bridge_address
  log "started $ctr at $addr"
done

# 6. Wait for systemd and sshd on each host.
for spec in "$@"; do
  ctr=$MH_PREFIX-${spec%%=*}
  state=$(timeout 90 podman exec "$ctr" systemctl is-system-running --wait 2>/dev/null || true)
  for _ in $(seq 1 60); do
    podman exec "$ctr" systemctl is-active --quiet ssh && break
    sleep 0.5
  done
  log "$ctr: systemd $state, ssh $(podman exec "$ctr" systemctl is-active ssh || true)"
  addr=$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$ctr")
  for _ in $(seq 1 20); do
    timeout 5 ssh -i "$MH_WORK/ssh/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o LogLevel=ERROR -o ConnectTimeout=3 -o BatchMode=yes "root@$addr" true && break
    sleep 1
  done
done
