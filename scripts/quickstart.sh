#!/usr/bin/env bash
# The newcomer's one command: install everything, bring up a local stack (default `local`: shared-cli with two real
# Copilot CLI replicas, Redis, HAProxy and the bundled test model on 127.0.0.1), then verify it.
#
#   bash scripts/quickstart.sh [--stack NAME] [--base-port N]
#
# Runs beside another fleet: when a port the stack needs is taken, a free block is chosen and written into the
# stack file's fleet:local (it says which); --base-port N asks for N, N+1, ... instead.
# Stop it later with: .venv/bin/copilot-fleet down --stack NAME
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=local
BASE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) STACK="${2:?--stack needs a name}"; shift 2 ;;
    --base-port) BASE=(--base-port "${2:?--base-port needs a port}"); shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*) echo "quickstart: unknown option $1 (allowed: --stack NAME, --base-port N)" >&2; exit 2 ;;
    *) STACK="$1"; shift ;;  # the stack as the first argument, as before
  esac
done

bash scripts/setup.sh
STACK=$(.venv/bin/python -m copilot_fleet.local.quickstart --stack "$STACK" "${BASE[@]}")
.venv/bin/copilot-fleet up --stack "$STACK"
.venv/bin/copilot-fleet verify --stack "$STACK"
