#!/usr/bin/env bash
# The newcomer's one command: install everything, bring up the embedded default (the `local` stack: shared-cli with
# two real Copilot CLI replicas, Redis, HAProxy and the bundled test model on 127.0.0.1), then verify it.
# Stop it later with: .venv/bin/copilot-fleet down --stack local
set -euo pipefail
cd "$(dirname "$0")/.."
STACK="${1:-local}"
bash scripts/setup.sh
.venv/bin/copilot-fleet up --stack "$STACK"
.venv/bin/copilot-fleet verify --stack "$STACK"
