#!/usr/bin/env bash
# Stop or start one scenario host as a whole machine (the failure scenario's power switch).
#
#   host_ctl.sh stop|start|state NAME
#
# stop: `podman stop`, systemd shuts the host down (SIGRTMIN+3), everything in it ends.
# start: `podman start`, systemd boots again and starts the enabled units; the default
# route that hosts_up.sh adds is put back, and it waits until systemd is up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=molecule/shared/common.sh
. "$here/common.sh"
action=${1:?usage: host_ctl.sh stop|start|state NAME}
ctr=$MH_PREFIX-${2:?usage: host_ctl.sh stop|start|state NAME}
export CONTAINERS_CONF=$MH_WORK/containers.conf
case $action in
  stop) podman stop -t 30 "$ctr" >/dev/null ;;
  start)
    podman start "$ctr" >/dev/null
    mh_default_route "$ctr"
    mh_bridge_address
    timeout 90 podman exec "$ctr" systemctl is-system-running --wait || true
    ;;
  state) podman inspect -f '{{.State.Status}}' "$ctr" ;;
  *) echo "host_ctl.sh: unknown action $action" >&2; exit 2 ;;
esac
