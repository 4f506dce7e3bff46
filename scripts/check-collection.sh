#!/usr/bin/env bash
# The quality gates of the Ansible collection cairn.storage (tests/sanity/README.md):
#   sanity     ansible-test sanity --python 3.11 in a copy ansible_collections/cairn/storage
#   units      ansible-test units --python 3.11 (tests/unit)
#   lint       ansible-lint --offline --profile production (.ansible-lint)
#   changelog  antsibull-changelog lint, and a trial release of the fragments in the copy
#   build      ansible-galaxy collection build from the checkout; the tarball must hold no
#              tests, caches, virtualenvs or VCS files
#   install    ansible-galaxy collection install of the tarball into an empty directory
#   doc        ansible-doc for every module, role and other plugin of the installed copy
#   ee         meta/execution-environment.yml against ansible-builder's schema, the
#              installed collection's dependencies as ansible-builder reads them, and
#              `ansible-builder create` of the EE in docs/awx.md (no image is built)
#   awx        the surveys in docs/awx.md: valid, and every variable read by its playbook
# Every gate runs (the later ones need the build); a line per gate with its time, then a
# non-zero exit when any failed.  Only .venv is needed (it goes first on PATH) and no
# network except PyPI, where ansible-test fetches each sanity test's pinned requirements
# once (kept in ~/.ansible/test/venv and pip's cache afterwards).
#
#   scripts/check-collection.sh [--keep] [GATE...]      (default: every gate)
# The gate functions are called through `gate`, which shellcheck cannot follow.
# shellcheck disable=SC2317
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 NO_COLOR=1

KEEP=0
GATES=()
for arg in "$@"; do
    case $arg in
        --keep) KEEP=1 ;;
        -h | --help)
            sed -n '2,22p' "$0"
            exit 0
            ;;
        sanity | units | lint | changelog | build | install | doc | ee | awx) GATES+=("$arg") ;;
        *)
            echo "unknown argument: $arg (gates: sanity units lint changelog build install doc ee awx)" >&2
            exit 2
            ;;
    esac
done
[ ${#GATES[@]} -eq 0 ] && GATES=(sanity units lint changelog build install doc ee awx)
wanted() { [[ " ${GATES[*]} " == *" $1 "* ]]; }

TMP=$(mktemp -d /tmp/cairn-collection-check.XXXXXX)
if [ "$KEEP" = 1 ]; then
    echo "work directory (kept): $TMP"
else
    trap 'rm -rf "$TMP"' EXIT
fi
LOGS=$TMP/logs
# the checkout's ansible.cfg points at .collections (a link to the checkout); the gates use
# their own trees and an empty configuration
: >"$TMP/ansible.cfg"
export ANSIBLE_CONFIG=$TMP/ansible.cfg
mkdir -p "$LOGS"
SUMMARY=()
FAILED=0

# gate NAME COMMAND...: runs the command with its output in $LOGS/NAME.log (shown when it
# fails), records PASS/FAIL and the time.
gate() {
    local name=$1
    shift
    local start rc secs
    echo "== $name"
    start=$EPOCHREALTIME
    "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    if [ $rc -eq 0 ]; then
        SUMMARY+=("PASS  $name  ${secs}s")
        echo "PASS  $name  ${secs}s"
    else
        FAILED=1
        SUMMARY+=("FAIL  $name  ${secs}s  (exit $rc)")
        tail -n 80 "$LOGS/$name.log" | sed 's/^/    /'
        echo "FAIL  $name  ${secs}s  (exit $rc; full log: $LOGS/$name.log)"
    fi
    return $rc
}

# ---------------------------------------------------------------------------------------
# The tree ansible-test and ansible-lint run in: TMP/ansible_collections/cairn/storage, a
# copy of the collection's files as git knows them (tracked, and new files not ignored, so
# work in progress is checked too), made a git repository since ansible-test lists a
# collection's files through git.
#
# Left out of this tree, on purpose:
#   engine/   the bundled engine: its own Python 3.11+ package, shipped as it is to the
#             hosts (roles/engine installs it); it is not Ansible content and has its own
#             gates in scripts/test.sh (ruff, mypy, pytest). ansible-test's rules for
#             plugins (pylint with Ansible's policy, module-target Python versions) do not
#             apply to it, and listing each of its files in an ignore file would hide
#             nothing useful.
#   bench/ scripts/ .ci/ Makefile requirements.txt ansible.cfg .collections .venv
#             the developers' tools, not shipped (galaxy.yml build_ignore).
# ---------------------------------------------------------------------------------------
COLL=$TMP/ansible_collections/cairn/storage
make_tree() {
    mkdir -p "$COLL"
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            case $f in
                engine/* | bench/* | scripts/* | .ci/* | .venv/* | .collections/* | \
                    Makefile | requirements.txt | ansible.cfg) continue ;;
            esac
            # a tracked file deleted in the work tree, or one that vanished while listed
            [ -e "$f" ] || continue
            printf '%s\0' "$f"
        done | tar -C "$ROOT" --null -T - -cf - | tar -C "$COLL" -xf - || return 1
    # the license policy, the same for every module (tests/sanity/README.md): add the line
    # for modules the ignore file does not list yet, and say so
    local ignore=$COLL/tests/sanity/ignore-2.19.txt m
    mkdir -p "$(dirname "$ignore")"
    touch "$ignore"
    for m in "$COLL"/plugins/modules/*.py; do
        [ -e "$m" ] || continue
        m=${m#"$COLL"/}
        if ! grep -q "^$m validate-modules:missing-gplv3-license" "$ignore"; then
            echo "note: $m is not in tests/sanity/ignore-2.19.txt; adding its license line"
            echo "$m validate-modules:missing-gplv3-license # Apache-2.0 collection (galaxy.yml), not GPLv3" >>"$ignore"
        fi
    done
    (
        cd "$COLL" &&
            git init -q &&
            git add -A &&
            git -c user.name=check -c user.email=check@localhost commit -qm tree
    ) || return 1
    echo "tree: $COLL ($(git -C "$COLL" ls-files | wc -l) files)"
}

# ansible-test bootstraps pip in each of its virtual environments with a get-pip script it
# downloads from a host these machines cannot reach; it looks in its cache first.  This
# stand-in uses the Python's own bundled pip (ensurepip), then installs what ansible-test
# asks for from PyPI.
bootstrap_pip() {
    local cache=$HOME/.ansible/test/cache v
    mkdir -p "$cache"
    # the version ansible-test asks for (get_pip_24_2.py for ansible-core 2.19)
    v=$(python -c 'import inspect, re, ansible_test._internal.python_requirements as p
print(re.search(r"pip=.([0-9.]+).", inspect.getsource(p.get_venv_packages)).group(1))') || return 1
    cat >"$cache/get_pip_${v//./_}.py" <<'EOF'
# Written by Cairn's scripts/check-collection.sh: a stand-in for ansible-test's download of
# get-pip.py, using the interpreter's bundled pip (ensurepip).
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call(
    [sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"], stdout=subprocess.DEVNULL
)
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *args])
EOF
}

sanity() (
    cd "$COLL" || exit 1
    ansible-test sanity --python 3.11 --color no
)

units() (
    cd "$COLL" || exit 1
    # every module must have its unit test file
    missing=0
    for m in plugins/modules/*.py; do
        m=$(basename "$m" .py)
        if [ ! -e "tests/unit/plugins/modules/test_$m.py" ]; then
            echo "no unit tests for module $m (tests/unit/plugins/modules/test_$m.py)"
            missing=1
        fi
    done
    ansible-test units --python 3.11 --color no || exit 1
    exit "$missing"
)

lint() (
    # in the copy: ansible-lint installs the collection it lints into .ansible/ of the
    # project, which must not land in the checkout
    cd "$COLL" || exit 1
    ANSIBLE_COLLECTIONS_PATH=$TMP ansible-lint --offline --profile production --nocolor
)

changelog() (
    cd "$COLL" || exit 1
    antsibull-changelog lint || exit 1
    antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml || exit 1
    # a trial release in the copy: every fragment must render
    version=$(python -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')
    antsibull-changelog release --version "$version" --date 2000-01-01 || exit 1
    test -s CHANGELOG.md && head -n 60 CHANGELOG.md
)

ARTIFACT=
build() {
    mkdir -p "$TMP/dist"
    # from the checkout itself, so galaxy.yml's build_ignore meets the real junk
    # (.venv, caches, engine/build, *.egg-info)
    ansible-galaxy collection build "$ROOT" --output-path "$TMP/dist" --force || return 1
    ARTIFACT=$(ls "$TMP"/dist/cairn-storage-*.tar.gz) || return 1
    tar -tzf "$ARTIFACT" >"$TMP/artifact.list" || return 1
    echo "artifact: $ARTIFACT ($(wc -l <"$TMP/artifact.list") entries, $(du -k "$ARTIFACT" | cut -f1) KiB)"
    # what must not ship: tests (the collection's, the engine's, the roles'), molecule
    # scenarios, virtualenvs, caches, VCS and packaging junk, developer tools
    local bad
    bad=$(grep -E '(^|/)(tests|molecule|\.venv|venv|bench|__pycache__|\.git|\.pytest_cache|\.mypy_cache|\.ruff_cache|\.hypothesis|\.collections|\.ansible|\.ci|scripts|build|dist)(/|$)|\.egg-info(/|$)|\.pyc$|(^|/)changelogs/\.plugin-cache\.yaml$|^(requirements\.txt|Makefile|ansible\.cfg|\.gitignore)$' \
        "$TMP/artifact.list")
    if [ -n "$bad" ]; then
        echo "the artifact holds files it must not ship:"
        printf '  %s\n' "$bad"
        return 1
    fi
    # what must ship (the engine role builds the engine's wheels on the controller from
    # engine/pyproject.toml, README.md, constraints.txt and src/cairn/)
    local need
    for need in MANIFEST.json FILES.json README.md meta/runtime.yml \
        meta/execution-environment.yml meta/ee-requirements.txt meta/ee-bindep.txt \
        plugins/modules/ plugins/module_utils/ engine/pyproject.toml engine/README.md \
        engine/constraints.txt engine/src/cairn/; do
        if ! grep -qx "$need" "$TMP/artifact.list"; then
            echo "the artifact lacks $need"
            return 1
        fi
    done
    echo "top level: $(cut -d/ -f1 "$TMP/artifact.list" | sort -u | tr '\n' ' ')"
}

INSTALLED=$TMP/installed
install() {
    [ -n "$ARTIFACT" ] || {
        echo "no artifact (the build gate failed)"
        return 1
    }
    mkdir -p "$INSTALLED"
    ansible-galaxy collection install "$ARTIFACT" -p "$INSTALLED" --offline || return 1
    ANSIBLE_COLLECTIONS_PATH=$INSTALLED ansible-galaxy collection list cairn.storage \
        -p "$INSTALLED" || return 1
    test -f "$INSTALLED/ansible_collections/cairn/storage/MANIFEST.json"
}

# doc_one TYPE NAME: ansible-doc of one plugin or role from the installed copy; fails on a
# non-zero exit, anything on stderr, or a page without its description
doc_one() {
    local type=$1 name=$2 out err
    out=$(cd "$TMP/dist" && ANSIBLE_COLLECTIONS_PATH=$INSTALLED ansible-doc -t "$type" "$name" 2>"$TMP/doc.err")
    local rc=$?
    err=$(grep -v -E 'CryptographyDeprecationWarning|from cryptography.hazmat|^\s*$' "$TMP/doc.err")
    if [ "$rc" -ne 0 ] || [ -n "$err" ]; then
        echo "FAIL ansible-doc -t $type $name (exit $rc): $err"
        return 1
    fi
    if [ "$(printf '%s' "$out" | wc -l)" -lt 5 ] || ! grep -q "$name" <<<"$out"; then
        echo "FAIL ansible-doc -t $type $name: empty or foreign page"
        printf '%s\n' "$out" | head -n 10
        return 1
    fi
    echo "ok   ansible-doc -t $type $name ($(printf '%s\n' "$out" | wc -l) lines)"
}

doc() {
    local base=$INSTALLED/ansible_collections/cairn/storage failed=0 f n type
    [ -d "$base" ] || {
        echo "no installed collection (the install gate failed)"
        return 1
    }
    # every module the checkout has must be documented from the installed artifact
    for f in "$ROOT"/plugins/modules/*.py; do
        n=$(basename "$f" .py)
        [ "$n" = __init__ ] && continue
        doc_one module "cairn.storage.$n" || failed=1
    done
    # every role (ansible-doc reads meta/argument_specs.yml)
    for f in "$ROOT"/roles/*/; do
        [ -d "$f" ] || continue
        n=$(basename "$f")
        if [ ! -e "$f/meta/argument_specs.yml" ] && [ ! -e "$f/meta/argument_specs.yaml" ]; then
            echo "FAIL role $n has no meta/argument_specs.yml"
            failed=1
            continue
        fi
        doc_one role "cairn.storage.$n" || failed=1
    done
    # any other plugin type with documentation (filters, tests, lookups, ...)
    for type in filter test lookup inventory callback connection become; do
        [ -d "$ROOT/plugins/$type" ] || continue
        local listed
        listed=$(cd "$TMP/dist" && ANSIBLE_COLLECTIONS_PATH=$INSTALLED ansible-doc -t "$type" -l cairn.storage 2>/dev/null |
            awk '{print $1}' | grep '^cairn\.storage\.')
        if [ -z "$listed" ]; then
            echo "FAIL plugins/$type exists but ansible-doc lists no documented $type plugin"
            failed=1
        fi
        for n in $listed; do
            doc_one "$type" "$n" || failed=1
        done
    done
    return "$failed"
}

ee() {
    local base=$INSTALLED/ansible_collections/cairn/storage
    # 1. meta/execution-environment.yml: valid for ansible-builder's v3 schema, and its
    #    dependency files exist relative to the collection root (where ansible-builder's
    #    introspection resolves them when cairn.storage is in an EE)
    python - "$ROOT/meta/execution-environment.yml" "$ROOT" <<'EOF' || return 1
import os
import sys

import yaml
from ansible_builder.ee_schema import validate_schema

path, root = sys.argv[1], sys.argv[2]
with open(path) as f:
    doc = yaml.safe_load(f)
validate_schema(doc)
deps = doc.get("dependencies") or {}
for kind in ("python", "system"):
    ref = deps.get(kind)
    if not isinstance(ref, str) or not os.path.isfile(os.path.join(root, ref)):
        sys.exit("%s: dependencies.%s must name a file from the collection root, not %r" % (path, kind, ref))
print("meta/execution-environment.yml: valid (version %s); python: %s, system: %s" % (doc["version"], deps["python"], deps["system"]))
EOF
    # 2. what ansible-builder collects from the installed artifact
    [ -d "$base" ] || {
        echo "no installed collection (the install gate failed)"
        return 1
    }
    ansible-builder introspect --sanitize "$INSTALLED" >"$TMP/introspect.txt" || return 1
    cat "$TMP/introspect.txt"
    local line
    while IFS= read -r line; do
        line=${line%%#*}
        line=$(echo "$line" | xargs)
        [ -z "$line" ] && continue
        if ! grep -qF -- "$(echo "$line" | awk '{print $1}')" "$TMP/introspect.txt"; then
            echo "ansible-builder does not see '$line' of the collection's EE files"
            return 1
        fi
    done < <(cat "$ROOT/meta/ee-requirements.txt" "$ROOT/meta/ee-bindep.txt")
    # 3. the EE of docs/awx.md: its definition block, built into a context (no image)
    mkdir -p "$TMP/ee"
    python - "$ROOT/docs/awx.md" "$TMP/ee" <<'EOF' || return 1
import re
import sys

text = open(sys.argv[1]).read()
blocks = re.findall(r"<!-- ee:([\w.-]+) -->\n```\w*\n(.*?)```", text, re.S)
if not blocks:
    sys.exit("docs/awx.md has no <!-- ee:FILE --> blocks (the EE definition)")
for name, body in blocks:
    with open("%s/%s" % (sys.argv[2], name), "w") as f:
        f.write(body)
    print("docs/awx.md -> %s" % name)
EOF
    cp "$ARTIFACT" "$TMP/ee/" || return 1
    (cd "$TMP/ee" && ansible-builder create --file execution-environment.yml --context context -v 2) || return 1
    local cf
    cf=$TMP/ee/context/Containerfile
    [ -e "$cf" ] || cf=$TMP/ee/context/Dockerfile
    [ -s "$cf" ] || {
        echo "ansible-builder create made no Containerfile"
        return 1
    }
    # the image build's galaxy stage, as its Containerfile runs it (in /build = _build)
    grep -E 'WORKDIR /build|COPY _build /build' "$cf" || return 1
    (cd "$TMP/ee/context/_build" &&
        ansible-galaxy collection install -r requirements.yml -p "$TMP/ee/collections" --offline) || return 1
    # and its builder stage: the dependencies its introspection collects
    python "$TMP/ee/context/_build/scripts/introspect.py" introspect --sanitize "$TMP/ee/collections" |
        tee "$TMP/ee/introspect.txt" || return 1
    grep -q 'from collection cairn.storage' "$TMP/ee/introspect.txt" || {
        echo "the EE build would not see cairn.storage's dependencies"
        return 1
    }
    echo "context: $(cd "$TMP/ee/context" && find . -type f | sort | tr '\n' ' ')"
}

# docs/awx.md: each survey (a JSON block after <!-- survey:PLAYBOOK -->) is a valid AWX
# survey spec, its playbook exists, and the playbook reads every survey variable
awx() {
    python - "$ROOT" <<'EOF'
import json
import os
import re
import sys

root = sys.argv[1]
text = open(os.path.join(root, "docs", "awx.md")).read()
surveys = re.findall(r"<!-- survey:([\w./-]+) -->\n```json\n(.*?)```", text, re.S)
if not surveys:
    sys.exit("docs/awx.md has no <!-- survey:PLAYBOOK --> blocks")
types = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
bad = []
for playbook, body in surveys:
    try:
        spec = json.loads(body)
    except ValueError as e:
        bad.append("%s: survey is not JSON: %s" % (playbook, e))
        continue
    path = os.path.join(root, playbook)
    if not os.path.isfile(path):
        bad.append("%s: the survey's playbook does not exist" % playbook)
        continue
    source = open(path).read()
    for key in ("name", "description", "spec"):
        if key not in spec:
            bad.append("%s: survey without %s" % (playbook, key))
    for q in spec.get("spec", []):
        var = q.get("variable", "")
        for key in ("question_name", "variable", "type", "required"):
            if key not in q:
                bad.append("%s: question %r without %s" % (playbook, var, key))
        if q.get("type") not in types:
            bad.append("%s: question %r has type %r" % (playbook, var, q.get("type")))
        if q.get("type") in ("multiplechoice", "multiselect") and q.get("default", "") not in q.get("choices", []):
            bad.append("%s: question %r: default %r is not a choice" % (playbook, var, q.get("default")))
        if not re.search(r"\b%s\b" % re.escape(var), source):
            bad.append("%s: the playbook never reads the survey variable %r" % (playbook, var))
    print("%s: %d questions (%s)" % (playbook, len(spec.get("spec", [])), ", ".join(q.get("variable", "?") for q in spec.get("spec", []))))
for b in bad:
    print("FAIL " + b)
sys.exit(1 if bad else 0)
EOF
}

START=$(date +%s)
if wanted sanity || wanted units || wanted lint || wanted changelog; then
    gate tree make_tree || {
        echo "cannot make the collection tree"
        exit 1
    }
    grep '^note:' "$LOGS/tree.log"
fi
wanted sanity && bootstrap_pip && gate sanity sanity
wanted units && gate units units
wanted lint && gate lint lint
wanted changelog && gate changelog changelog
# install, doc and ee need the artifact
if wanted build || wanted install || wanted doc || wanted ee; then
    gate build build
    if wanted install || wanted doc || wanted ee; then gate install install; fi
    wanted doc && gate doc doc
    wanted ee && gate ee ee
fi
wanted awx && gate awx awx

echo
echo "== collection gates ($(($(date +%s) - START)) s)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
