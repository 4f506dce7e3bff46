#!/usr/bin/env bash
# The main job on one machine: `cairn up` (docs/agent.md) starts a node agent with three
# embedded pools on 127.0.0.2-4 and one 3-replica volume on 127.0.0.1:3260, prints its
# iSCSI URL and how to look at it, and runs until Ctrl-C. A second run resumes the data.
# Options go to `cairn up` (e.g. --replicas 5 --size 4G); CAIRN_DATA says where data lives.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/cairn up --data "${CAIRN_DATA:-/var/lib/cairn/up}" "$@"
