#!/usr/bin/env bash
# Remove the hosts of one molecule scenario (hosts_up.sh), and the internal network once
# no scenario uses it any more. The images stay for the next scenario; CAIRN_MH_PURGE=1
# removes them and the work directory as well.
#
#   hosts_down.sh SCENARIO
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=molecule/shared/common.sh
. "$here/common.sh"
scenario=${1:?usage: hosts_down.sh SCENARIO}
[ -f "$MH_WORK/containers.conf" ] && export CONTAINERS_CONF=$MH_WORK/containers.conf

mapfile -t ids < <(podman ps -a -q --filter "label=$MH_LABEL.scenario=$scenario")
if [ ${#ids[@]} -gt 0 ]; then
  podman rm -f -t 10 "${ids[@]}" >/dev/null
  echo "[cairn-mh $scenario] removed ${#ids[@]} host(s)"
fi
if [ -z "$(podman ps -a -q --filter "label=$MH_LABEL=1")" ] && podman network exists "$MH_NETWORK"; then
  podman network rm "$MH_NETWORK" >/dev/null && echo "[cairn-mh $scenario] removed network $MH_NETWORK"
fi
if [ "${CAIRN_MH_PURGE:-0}" = 1 ]; then
  podman image rm -f "$MH_IMAGE" "$MH_BASE_IMAGE" >/dev/null 2>&1
  rm -rf "$MH_WORK"
fi
exit 0
