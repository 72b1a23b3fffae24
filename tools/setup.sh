# shellcheck shell=bash
# Shared set-up for tools/test.sh and tools/demo.sh; source it, do not run it.
#
#   XSTORE_EXTRAS=test,fuse source tools/setup.sh
#
# Afterwards: the current directory is the repository root, REPO_ROOT and VENV are set, the Debian packages
# xstore needs are installed (as root, with apt, only those missing), and .venv holds xstore installed in
# editable mode with the extras named in XSTORE_EXTRAS (default: fuse).

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO_ROOT/.venv"
cd -- "$REPO_ROOT" || return

# nix-bin: the reference implementation for the compat tests. fuse3, libfuse3-dev, pkg-config, gcc,
# python3-dev: pyfuse3 builds against libfuse3 and mounts with fusermount3. python3-venv: ensurepip.
APT_PACKAGES=(nix-bin fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc sqlite3)

section() {
    printf '\n==== %s ====\n' "$*"
}

install_system_packages() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "not a Debian system: install Nix, libfuse3 (with headers), pkg-config and a C compiler yourself"
        return 0
    fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "system packages present: ${APT_PACKAGES[*]}"
        return 0
    fi
    echo "installing missing system packages: ${missing[*]}"
    local sudo=()
    if ((EUID != 0)); then
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

check_python() {
    if ! command -v python3 >/dev/null 2>&1; then
        echo "error: python3 not found on PATH" >&2
        return 1
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: xstore needs Python >= 3.11; python3 on PATH is $(python3 -V 2>&1) ($(command -v python3))" >&2
        return 1
    fi
    echo "python3: $(python3 -V 2>&1) ($(command -v python3))"
}

make_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "reusing $VENV ($("$VENV/bin/python" -V 2>&1))"
    else
        echo "creating $VENV"
        rm -rf -- "$VENV"
        python3 -m venv "$VENV"
    fi
}

install_project() {
    local extras=${XSTORE_EXTRAS:-fuse}
    # Quiet unless something goes wrong: pip prints its errors either way. The filter drops pip's notes
    # about configured package index folders that do not exist on this machine, one per package.
    "$VENV/bin/python" -m pip install -q -e ".[$extras]" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "installed xstore $("$VENV/bin/python" -c 'import xstore; print(xstore.__version__)') with extras [$extras]"
}

section "system packages"
install_system_packages
section "python environment"
check_python
make_venv
install_project
