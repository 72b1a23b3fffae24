#!/usr/bin/env bash
# The test command: bash tools/test.sh [pytest arguments...]
#
# Installs what is missing (Debian packages as root, then .venv with xstore[test,fuse]), then runs ruff,
# mypy --strict and the pytest suite under `python -X dev -bb`, warnings as errors (pyproject.toml). Arguments go to
# pytest, e.g. `bash tools/test.sh -m 'not slow' -x`. Exits non-zero if any step fails, and also when
# pytest collected no test at all.
set -euo pipefail

XSTORE_EXTRAS=test,fuse
# shellcheck source=tools/setup.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/setup.sh"

section "ruff check"
lint_paths=(xstore tests examples)
if [[ -d bench ]]; then
    lint_paths+=(bench)
fi
"$VENV/bin/ruff" check "${lint_paths[@]}"

section "mypy --strict"
"$VENV/bin/mypy"

section "pytest"
status=0
"$VENV/bin/python" -X dev -bb -m pytest "$@" || status=$?
if ((status == 5)); then
    echo "error: pytest collected no tests (exit status 5)" >&2
    exit 1
fi
exit "$status"
