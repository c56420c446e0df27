#!/usr/bin/env bash
# Installs everything copilot-fleet needs on a fresh Debian machine (run as root, or with sudo available):
#   apt: redis-server, haproxy (the local fleet's lease store and load balancer), python3-venv, npm
#   npm: @github/copilot-linux-x64 at the CLI version the pinned SDK expects, into .tools/npm
#   pip: the project with every extra (client, deploy, local, verify, pod, bench, dev) into .venv, editable
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

CLI_VERSION=$(python3 -c 'import re,sys; print(re.search(r"CLI_VERSION = \"([^\"]+)\"", open("copilot_fleet/__init__.py").read()).group(1))')
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

say() { printf '==> %s\n' "$*"; }

apt_needed=()
command -v redis-server >/dev/null 2>&1 || apt_needed+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || apt_needed+=(haproxy)
command -v npm >/dev/null 2>&1 || apt_needed+=(npm)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_needed+=(python3-venv)
if [ ${#apt_needed[@]} -gt 0 ]; then
  say "apt-get install ${apt_needed[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_needed[@]}" >/dev/null
fi

CLI_BIN=.tools/npm/node_modules/@github/copilot-linux-x64/copilot
if [ ! -x "$CLI_BIN" ] || ! grep -q "\"version\": \"$CLI_VERSION\"" .tools/npm/node_modules/@github/copilot-linux-x64/package.json 2>/dev/null; then
  say "npm install @github/copilot-linux-x64@$CLI_VERSION (the Copilot CLI binary, about 190 MB)"
  mkdir -p .tools/npm
  npm install --prefix .tools/npm --no-audit --no-fund --loglevel=error "@github/copilot-linux-x64@$CLI_VERSION" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  say "python3 -m venv .venv"
  python3 -m venv .venv
fi
# Every extra: the README's commands and CI use all of them (the tests, the benchmarks, ruff and mypy).
EXTRAS=client,deploy,local,verify,pod,bench,dev
if ! .venv/bin/python -c 'import copilot_fleet.components, copilot, pulumi_kubernetes, pulumi_azure_native, supervisor, testinfra, matplotlib, mypy' >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.copilot-fleet-installed ]; then
  say "pip install -e '.[$EXTRAS]' into .venv"
  .venv/bin/pip install -q --disable-pip-version-check --no-compile -e ".[$EXTRAS]"
  touch .venv/.copilot-fleet-installed
fi
say "ready: CLI $("$CLI_BIN" --version 2>/dev/null | head -n 1), $(.venv/bin/copilot-fleet --version)"
