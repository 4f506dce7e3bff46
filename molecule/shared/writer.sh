#!/usr/bin/env bash
# Runs on the client host during the failure scenario's rolling upgrade: writes numbered
# patterns of SLOT bytes to distinct offsets of a volume through libiscsi (qemu-io, one iSCSI
# session per write) until STOPFILE exists or MAX writes were tried, and logs each write:
#   ok N OFFSET PATTERN        acknowledged (qemu-io reported the whole write done)
#   fail N OFFSET PATTERN MSG  not acknowledged (target restarting, ...): its data is undefined
#
#   writer.sh ISCSI_URL BASE_OFFSET SLOT MAX LOG STOPFILE
url=$1 base=$2 slot=$3 max=$4 log=$5 stop=$6
: >"$log"
i=0
while [ ! -e "$stop" ] && [ "$i" -lt "$max" ]; do
  pat=$((i % 255 + 1))
  off=$((base + i * slot))
  if out=$(timeout 60 qemu-io -f raw -c "write -P $pat $off $slot" "$url" 2>&1) \
    && [[ $out == *"wrote $slot/$slot bytes"* ]]; then
    echo "ok $i $off $pat" >>"$log"
  else
    echo "fail $i $off $pat $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-160)" >>"$log"
    sleep 0.5
  fi
  i=$((i + 1))
done
echo "end $i" >>"$log"
