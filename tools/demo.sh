#!/usr/bin/env bash
# The main-job command: bash tools/demo.sh [demo arguments...]
#
# Same set-up as tools/test.sh (Debian packages, .venv with xstore[cache,fuse]), then runs examples/demo.py:
# a Linux closure published to a signed binary cache, copied onto a case-insensitive FUSE volume and back out.
set -euo pipefail

XSTORE_EXTRAS=cache,fuse
# shellcheck source=tools/setup.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/setup.sh"

section "demo"
exec "$VENV/bin/python" examples/demo.py "$@"
