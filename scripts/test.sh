#!/usr/bin/env bash
# The project's tests: each folder in a pytest process of its own. Run in one process, a test folder that starts
# real fleets leaves state behind that fails 4 later fleet tests (each passes alone; cause not found yet, see
# docs/reliability.md), so folders are isolated. Extra arguments go to every pytest run.
set -u
cd "$(dirname "$0")/.."
status=0
for folder in tests/spec tests/testmodel tests/client tests/kubernetes tests/azure tests/local tests/operations \
              tests/verify tests/benchmarks tests/faults; do
  echo "== $folder"
  .venv/bin/python -m pytest -q "$folder" "$@" || status=1
done
exit $status
