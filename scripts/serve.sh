#!/usr/bin/env bash
# The main job on one machine: serve a thin volume on 127.0.0.1:3260 and print its URL.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${CAIRN_DATA:-/var/lib/cairn/local}
VOLUME=${CAIRN_VOLUME:-vol1}
SIZE=${CAIRN_SIZE:-1G}
PORTAL=${CAIRN_PORTAL:-127.0.0.1:3260}
IQN=${CAIRN_IQN:-iqn.2026-11.org.cairn:$VOLUME}
mkdir -p "$DATA"
cat >&2 <<MSG
cairn: serving volume '$VOLUME' ($SIZE) from $DATA on $PORTAL; stop with Ctrl-C.
cairn: the line below is the iSCSI URL. Try it from another shell:
  iscsi-ls -s iscsi://$PORTAL          # discovery
  iscsi-inq iscsi://$PORTAL/$IQN/0
  qemu-img info iscsi://$PORTAL/$IQN/0
  qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'read -P 0x5a 0 1M' iscsi://$PORTAL/$IQN/0
MSG
exec .venv/bin/cairn target serve --volume "$VOLUME" --size "$SIZE" --data "$DATA" \
  --portal "$PORTAL" --iqn "$IQN"
