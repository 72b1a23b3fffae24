#!/usr/bin/env bash
# macOS test run: xstore's tests with their temporary directories on the filesystems Mac users have.
#
#   macos-ci/run-tests.sh [pytest arguments...]
#
# 1. Makes a virtual environment (default .venv) with `pip install -e '.[test]'`: no fuse extra, since
#    pyfuse3 exists only on Linux, so this also checks that xstore installs and works without it.
# 2. Runs mypy --strict, which on a Mac checks the code as typed for darwin (a Linux-only call fails it).
# 3. Creates two 512 MiB APFS disk images with hdiutil, one case-insensitive (the macOS default) and one
#    case-sensitive, attaches them without showing them in the Finder, and checks each folds case as it
#    should.
# 4. Runs pytest once per volume, with TMPDIR and --basetemp on it: tests/unit, tests/property and
#    tests/macos, and tests/compat too when a Nix (nix-store) is on PATH. FUSE and namespace tests are
#    Linux-only and deselected by marker.
# 5. Detaches the images and deletes them, whatever happened (trap), and exits non-zero if any step failed.
#
# Environment: PYTHON (interpreter for the venv, default python3), XSTORE_VENV (default REPO/.venv),
# XSTORE_CI_VOLUMES (default "case-insensitive case-sensitive"), XSTORE_CI_PATHS (test paths, default as
# above), XSTORE_CI_KEEP=1 (leave the images attached and the work directory in place, for a look).
# Works with the bash 3.2 that macOS ships.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$REPO_ROOT"

PYTHON=${PYTHON:-python3}
VENV=${XSTORE_VENV:-$REPO_ROOT/.venv}
VOLUMES=${XSTORE_CI_VOLUMES:-case-insensitive case-sensitive}
IMAGE_SIZE=512m

section() {
    printf '\n==== %s ====\n' "$*"
}

die() {
    echo "error: $*" >&2
    exit 1
}

if [[ "$(uname -s)" != Darwin ]]; then
    die "macos-ci/run-tests.sh runs on macOS only (it needs hdiutil and APFS); on Linux use tools/test.sh"
fi

# -- python environment -------------------------------------------------------------------------------------

section "python environment"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON to a Python >= 3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "xstore needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)"
wanted=$("$PYTHON" -c 'import sys; print(sys.version)')
if [[ -x "$VENV/bin/python" ]] && [[ "$("$VENV/bin/python" -c 'import sys; print(sys.version)')" == "$wanted" ]]; then
    echo "reusing $VENV"
else
    echo "creating $VENV with $("$PYTHON" -V 2>&1)"
    rm -rf -- "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q -e '.[test]'
echo "xstore $("$VENV/bin/python" -c 'import xstore; print(xstore.__version__)') on $("$VENV/bin/python" -V 2>&1)," \
    "$(sw_vers -productName 2>/dev/null || echo macOS) $(sw_vers -productVersion 2>/dev/null || true) ($(uname -m))"
if "$VENV/bin/python" -c 'import pyfuse3' >/dev/null 2>&1; then
    die "pyfuse3 is importable in $VENV: this run must show that xstore works without it"
fi

failed=""  # one line per failed step (a string: bash 3.2 with set -u cannot expand an empty array)

section "mypy --strict (as typed for darwin)"
"$VENV/bin/mypy" || failed+="mypy"$'\n'

# -- disk images ----------------------------------------------------------------------------------------------

# Short paths: the tests bind Unix sockets under their temporary directories, and macOS limits a socket
# path to 104 bytes.
WORK=$(mktemp -d /tmp/xstore-ci.XXXXXX)
devices=()

cleanup() {
    local status=$? dev
    if [[ "${XSTORE_CI_KEEP:-}" == 1 ]]; then
        echo "XSTORE_CI_KEEP=1: leaving ${devices[*]+${devices[*]}} attached and $WORK in place"
        return "$status"
    fi
    for dev in ${devices[@]+"${devices[@]}"}; do
        hdiutil detach -quiet "$dev" 2>/dev/null || hdiutil detach -quiet -force "$dev" ||
            echo "warning: could not detach $dev" >&2
    done
    rm -rf -- "$WORK"
    return "$status"
}
trap cleanup EXIT

# make_volume KIND: create, attach and check one image; sets MOUNTPOINT (not a $(...) subshell, which
# would lose the device that cleanup must detach).
make_volume() {
    local kind=$1 fs image mnt out dev
    case $kind in
        case-insensitive) fs=APFS ;;
        case-sensitive) fs="Case-sensitive APFS" ;;
        *) die "unknown volume kind '$kind' (case-insensitive or case-sensitive)" ;;
    esac
    image="$WORK/$kind.dmg"
    mnt="$WORK/$kind"
    mkdir -p -- "$mnt"
    hdiutil create -quiet -size "$IMAGE_SIZE" -fs "$fs" -volname "xstore-$kind" "$image"
    # Ownership is ignored (-owners off), as on any removable volume: the new volume's root directory
    # need not belong to us. Permission bits still apply.
    out=$(hdiutil attach -nobrowse -noautoopen -noverify -owners off -mountpoint "$mnt" "$image")
    # The first line names the whole image device; detaching it detaches the APFS container too.
    dev=$(printf '%s\n' "$out" | awk '$1 ~ /^\/dev\/disk/ { print $1; exit }')
    [[ -n "$dev" ]] || die "hdiutil attach printed no device for $image:"$'\n'"$out"
    devices+=("$dev")
    echo "attached $image ($fs) as $dev at $mnt"
    diskutil info "$mnt" 2>/dev/null | grep -E 'File System Personality|Volume Name' || true

    [[ -w "$mnt" ]] || die "$mnt is not writable"
    : >"$mnt/.xstore-ci-A"
    local folds=no
    if [[ -e "$mnt/.xstore-ci-a" ]]; then
        folds=yes
    fi
    rm -f -- "$mnt/.xstore-ci-A"
    if [[ "$kind" == case-insensitive && $folds == no ]] || [[ "$kind" == case-sensitive && $folds == yes ]]; then
        die "$mnt should be $kind, but creating A then looking up a says folds=$folds"
    fi
    MOUNTPOINT=$mnt
}

# -- tests ----------------------------------------------------------------------------------------------------

read -r -a paths <<<"${XSTORE_CI_PATHS:-tests/unit tests/property tests/macos}"
markers="not fuse and not namespace"
if command -v nix-store >/dev/null 2>&1; then
    echo "Nix found: $(nix-store --version 2>&1 | head -n 1); the compat tests run too"
    if [[ -z "${XSTORE_CI_PATHS:-}" ]]; then
        paths+=(tests/compat)
    fi
else
    echo "no nix-store on PATH: compat tests deselected (install Nix to run them)"
    markers="$markers and not compat"
fi

for kind in $VOLUMES; do
    section "volume: $kind APFS"
    make_volume "$kind"
    mnt=$MOUNTPOINT
    mkdir -p -- "$mnt/tmp"
    section "pytest on $kind APFS (${paths[*]}; -m '$markers')"
    status=0
    # ${1+"$@"}: the pytest arguments, also when there are none (bash 3.2 with set -u).
    TMPDIR="$mnt/tmp/" XSTORE_MACOS_VOLUME="$kind" \
        "$VENV/bin/python" -X dev -bb -m pytest -W error -p no:cacheprovider \
        --basetemp="$mnt/pytest" -m "$markers" "${paths[@]}" ${1+"$@"} || status=$?
    if ((status == 5)); then
        echo "error: pytest collected no tests on $kind APFS (exit status 5)" >&2
    fi
    if ((status != 0)); then
        failed+="pytest on $kind APFS (exit status $status)"$'\n'
    fi
done

section "summary"
if [[ -n "$failed" ]]; then
    printf 'failed:\n%s' "$failed" >&2
    exit 1
fi
echo "all passed on: $VOLUMES"
