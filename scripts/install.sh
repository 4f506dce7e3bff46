#!/usr/bin/env bash
# Install what Cairn needs on a Debian 12 host (as root): the real iSCSI clients and peers
# the tests use, and a virtual environment with the engine, the Ansible control node
# (requirements.txt) and their pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc
  libiscsi-bin            # iscsi-ls, iscsi-inq, iscsi-readcapacity16, iscsi-test-cu, iscsi-perf
  qemu-utils qemu-block-extra qemu-system-common   # qemu-img/qemu-io over libiscsi, qemu-storage-daemon
  tgt                     # the peer target for benchmarks
  zfs-fuse                # ZFS in user space: zpool/zfs for the pool module and its tests
  fuse3 e2fsprogs util-linux kmod procps iproute2
  openssl                 # certificates for the agent API's TLS tests
  open-iscsi              # iscsiadm/iscsid for the iscsi_initiator module and its tests
  podman runc debootstrap openssh-client   # molecule/: isolated container hosts (molecule/run.sh)
  vagrant vagrant-libvirt # the lab's Vagrantfile: vagrant validate of its libvirt provider block
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "cairn: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c engine/constraints.txt -e 'engine[test,dev]' -r requirements.txt
echo "cairn: installed ($(.venv/bin/cairn --version))"

# ansible-playbook finds the collection cairn.storage (this repository) through ansible.cfg's
# collections_path: .collections/ansible_collections/cairn/storage -> the repository
mkdir -p .collections/ansible_collections/cairn
ln -sfn ../../.. .collections/ansible_collections/cairn/storage
# kubernetes.core (for playbooks/kubernetes.yml), from the ansible package on PyPI
bash scripts/collections.sh
