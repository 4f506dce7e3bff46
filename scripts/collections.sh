#!/usr/bin/env bash
# Collections that some of Cairn's playbooks use besides ansible.builtin and cairn.storage,
# put where ansible.cfg's collections_path finds them: .collections/ansible_collections/.
# Today: kubernetes.core, for playbooks/kubernetes.yml in apply mode (docs/kubernetes.md).
#
# Ansible Galaxy is not needed: the `ansible` community package on PyPI bundles these
# collections. The script downloads that one wheel with pip (pinned, no dependencies, into
# a cache directory), and unpacks ONLY the collections named below from it. It is
# idempotent: a collection whose MANIFEST.json already says the pinned version is left
# alone, and the wheel is downloaded only when it is not in the cache.
#
#   bash scripts/collections.sh            # from anywhere; uses .venv/bin/python if present
#
# Environment: PYTHON (the interpreter whose pip downloads; default .venv/bin/python, else
# python3), CAIRN_COLLECTIONS_CACHE (default ~/.cache/cairn/ansible-wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

# The community package built for ansible-core 2.19 (requirements.txt), and what it holds.
ANSIBLE_VERSION=12.3.0
COLLECTIONS=(
  "kubernetes.core 6.2.0"
)

DEST=.collections/ansible_collections
CACHE=${CAIRN_COLLECTIONS_CACHE:-$HOME/.cache/cairn/ansible-wheels}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

installed_version() {  # NAMESPACE NAME -> the version in its MANIFEST.json, or nothing
  "$PYTHON" - "$DEST/$1/$2/MANIFEST.json" <<'EOF'
import json, sys
try:
    with open(sys.argv[1]) as f:
        print(json.load(f)["collection_info"]["version"])
except (OSError, ValueError, KeyError):
    pass
EOF
}

todo=()
for entry in "${COLLECTIONS[@]}"; do
  read -r fqcn version <<<"$entry"
  ns=${fqcn%%.*} name=${fqcn#*.}
  have=$(installed_version "$ns" "$name")
  if [ "$have" = "$version" ]; then
    echo "cairn: collection $fqcn $version already in $DEST"
  else
    todo+=("$entry")
  fi
done
((${#todo[@]})) || exit 0

wheel=$(ls "$CACHE"/ansible-"$ANSIBLE_VERSION"-py3-none-any.whl 2>/dev/null || true)
if [ -z "$wheel" ]; then
  echo "cairn: downloading ansible==$ANSIBLE_VERSION (the wheel only) into $CACHE"
  mkdir -p "$CACHE"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE" "ansible==$ANSIBLE_VERSION"
  wheel=$(ls "$CACHE"/ansible-"$ANSIBLE_VERSION"-py3-none-any.whl)
fi

mkdir -p "$DEST"
for entry in "${todo[@]}"; do
  read -r fqcn version <<<"$entry"
  ns=${fqcn%%.*} name=${fqcn#*.}
  # unpack into a scratch directory next to the destination, check it, then swap it in,
  # so an interrupted run never leaves half a collection behind
  "$PYTHON" - "$wheel" "$ns" "$name" "$version" "$DEST" <<'EOF'
import json, os, shutil, sys, tempfile, zipfile

wheel, ns, name, version, dest = sys.argv[1:]
prefix = "ansible_collections/%s/%s/" % (ns, name)
scratch = tempfile.mkdtemp(prefix=".%s.%s." % (ns, name), dir=dest)
try:
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            sys.exit("cairn: %s has no collection %s.%s" % (wheel, ns, name))
        for m in members:
            rel = m[len(prefix):]
            if rel.startswith("/") or ".." in rel.split("/"):
                sys.exit("cairn: refusing the member %s of %s" % (m, wheel))
            target = os.path.join(scratch, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    with open(os.path.join(scratch, "MANIFEST.json")) as f:
        got = json.load(f)["collection_info"]["version"]
    if got != version:
        sys.exit("cairn: %s holds %s.%s %s, not %s: update scripts/collections.sh"
                 % (os.path.basename(wheel), ns, name, got, version))
    final = os.path.join(dest, ns, name)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if os.path.islink(final) or os.path.isfile(final):
        os.unlink(final)
    elif os.path.isdir(final):
        shutil.rmtree(final)
    os.rename(scratch, final)
    scratch = None
    print("cairn: collection %s.%s %s unpacked into %s" % (ns, name, version, final))
finally:
    if scratch and os.path.isdir(scratch):
        shutil.rmtree(scratch)
EOF
done
