#!/usr/bin/env bash
# The test command: bash tools/test.sh [pytest arguments...]
#
# Installs what is missing (Debian packages as root, then .venv with xstore[test,fuse]), then runs ruff,
# mypy --strict and the pytest suite under `python -X dev -bb`, warnings as errors (pyproject.toml); run as
# root without arguments, it then runs the non-FUSE tests again as the unprivileged user nobody. Arguments
# go to pytest, e.g. `bash tools/test.sh -m 'not slow' -x`. Exits non-zero if any step fails, and also
# when pytest collected no test at all.
set -euo pipefail

XSTORE_EXTRAS=test,fuse
# shellcheck source=tools/setup.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/setup.sh"

section "ruff check"
lint_paths=(xstore tests examples tools)
if [[ -d bench ]]; then
    lint_paths+=(bench)
fi
"$VENV/bin/ruff" check "${lint_paths[@]}"

section "mypy --strict"
"$VENV/bin/mypy"

# The non-FUSE tests once more as an unprivileged user (nobody): dump, restore, hash, stores the user owns,
# import, export, path-info, verify. Bugs that only non-root users meet (permissions on read-only trees,
# lock files, a database that may not be written) show here; root passes every permission check.
run_unprivileged() {
    if ! command -v setpriv >/dev/null 2>&1; then
        echo "error: setpriv (util-linux) is needed to run tests as an unprivileged user" >&2
        return 1
    fi
    local py="$VENV/bin/python" group tmp status=0
    group=$(id -g nobody)
    if ! setpriv --reuid=nobody --regid="$group" --clear-groups env "$py" -c pass 2>/dev/null; then
        # The main environment's interpreter lives where nobody may not look (a Python under /root):
        # a second environment, from the system's Python, for this run.
        local venv="$REPO_ROOT/.venv-nobody"
        if [[ ! -x "$venv/bin/python" ]]; then
            /usr/bin/python3 -m venv "$venv"
        fi
        # Every time, so that an environment made before the extras last changed is brought up to date.
        "$venv/bin/python" -m pip install -q -e ".[test]" \
            2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
        py="$venv/bin/python"
    fi
    tmp=$(mktemp -d)
    chown nobody:"$group" "$tmp"
    setpriv --reuid=nobody --regid="$group" --clear-groups \
        env HOME="$tmp" TMPDIR="$tmp" HYPOTHESIS_STORAGE_DIRECTORY="$tmp/hypothesis" \
        GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*' \
        "$py" -X dev -bb -m pytest -q -p no:cacheprovider --basetemp="$tmp/pytest" \
        -m "not fuse and not namespace and not compat" tests/unit tests/property || status=$?
    rm -rf -- "$tmp"
    return "$status"
}

section "pytest"
status=0
"$VENV/bin/python" -X dev -bb -m pytest "$@" || status=$?
if ((status == 5)); then
    echo "error: pytest collected no tests (exit status 5)" >&2
    exit 1
fi
if ((status == 0 && $# == 0 && EUID == 0)); then
    section "pytest as an unprivileged user (nobody)"
    run_unprivileged || status=$?
fi
exit "$status"
