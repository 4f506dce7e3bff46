# shellcheck shell=bash disable=SC2034
# Names and settings shared by hosts_up.sh, hosts_down.sh and host_ctl.sh (sourced).
MH_PREFIX=cairn-mh
MH_LABEL=io.cairn.mh
MH_WORK=${CAIRN_MH_WORK:-/tmp/cairn-mh}
MH_SUBNET=${CAIRN_MH_SUBNET:-10.89.78}
MH_SUITE=${CAIRN_MH_SUITE:-bookworm}
MH_NETWORK=$MH_PREFIX-net
MH_BASE_IMAGE=localhost/$MH_PREFIX-base:$MH_SUITE
MH_IMAGE=localhost/$MH_PREFIX-host:$MH_SUITE
# Every host gets the same image: storage hosts need zfs-fuse and python3-venv (the engine
# role makes a venv), clients need open-iscsi (the initiator role) and libiscsi's and QEMU's
# iSCSI clients (the data checks).
MH_PACKAGES="python3-venv openssh-server sudo procps iproute2 zfs-fuse fuse3 \
open-iscsi libiscsi-bin qemu-utils qemu-block-extra"

# podman with runc (crun refuses this kind of host's hybrid cgroups) and ulimits below the
# hard limits a VM may impose (podman's default nofile needs CAP_SYS_RESOURCE).
mh_podman_conf() {
  mkdir -p "$MH_WORK"
  cat >"$MH_WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
  export CONTAINERS_CONF=$MH_WORK/containers.conf
}

# An --internal network gives a container no default route, so Ansible's
# ansible_default_ipv4 would be empty. Route via an address nobody owns: facts work and
# packets for the outside die at ARP on the bridge.
mh_default_route() {
  local pid
  pid=$(podman inspect -f '{{.State.Pid}}' "$1")
  nsenter -t "$pid" -n ip route replace default via "$MH_SUBNET.254" dev eth0
}

# podman's CNI backend gives an --internal network's bridge no address on this side
# (isGateway false), so this machine could not reach the hosts (and would send their
# packets to its own default route). Give the bridge the gateway address, and check
# that the hosts' subnet is routed to it.
mh_bridge_address() {
  local br
  br=$(podman network inspect -f '{{.NetworkInterface}}' "$MH_NETWORK")
  ip link show dev "$br" >/dev/null 2>&1 || { echo "cairn-mh: no bridge $br yet" >&2; return 1; }
  ip -4 addr show dev "$br" | grep -q "inet $MH_SUBNET.1/24" || ip addr add "$MH_SUBNET.1/24" dev "$br"
  ip link set "$br" up
  ip route get "$MH_SUBNET.2" | grep -q "dev $br" || {
    echo "cairn-mh: $MH_SUBNET.0/24 is not routed to $br: $(ip route get "$MH_SUBNET.2")" >&2
    return 1
  }
}
