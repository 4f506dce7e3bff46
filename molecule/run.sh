#!/usr/bin/env bash
# Run the molecule scenarios (docs/molecule.md) and print each one's time.
#
#   molecule/run.sh                    cluster, failure, default
#   molecule/run.sh cluster            just one (or several, in the order given)
#
# Needs root, podman, runc and debootstrap (scripts/install.sh). The container image is
# built by the first scenario and reused by the others; the engine's wheels are built
# once per run (on this machine, the "controller") and installed into every host.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$PWD
export PATH="$repo/.venv/bin:$PATH"
export ANSIBLE_NOCOLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0 NO_COLOR=1
work=${CAIRN_MH_WORK:-/tmp/cairn-mh}
mkdir -p "$work"

# ansible-playbook finds cairn.storage (this repository) there (as scripts/install.sh does)
mkdir -p .collections/ansible_collections/cairn
[ -e .collections/ansible_collections/cairn/storage ] || ln -sfn ../../.. .collections/ansible_collections/cairn/storage

# A run installs the engine/ of this checkout: drop the wheels of an earlier run.
rm -rf "$work/wheelhouse"

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(cluster failure default)
results=()
rc=0
t_all=$(date +%s)
for s in "${scenarios[@]}"; do
  echo "== molecule test -s $s"
  t0=$(date +%s)
  if molecule test -s "$s"; then status=passed; else status=FAILED; rc=1; fi
  results+=("$s: $status in $(($(date +%s) - t0)) s")
  echo "== molecule scenario ${results[-1]}"
done
echo "== molecule summary"
printf '  %s\n' "${results[@]}"
echo "  all: $(($(date +%s) - t_all)) s"
exit $rc
