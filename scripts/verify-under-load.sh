#!/usr/bin/env bash
# The checks on a loaded machine: `up`, `verify` and `down` of every local stack (or the ones named), and with
# --suite the project's test suite, all while scripts/cpu-burner.sh keeps every core busy.
#
#   scripts/verify-under-load.sh [--procs N] [--seconds S] [--suite] [STACK...]
#
# --procs: busy processes (default 3 per core); --seconds: the burner's hard bound (default 5400). Stacks that are
# running are refused (this starts and stops its own fleets). Prints one line per step with its time and the load
# average, and exits 1 if any step failed. Results of a run: docs/verification.md ("Under CPU load").
set -euo pipefail
cd "$(dirname "$0")/.."

procs=$((3 * $(nproc))); seconds=5400; suite=0; stacks=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --procs) procs="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --suite) suite=1; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "verify-under-load: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) stacks+=("$1"); shift ;;
    esac
done
if [[ ${#stacks[@]} -eq 0 ]]; then
    for file in stacks/Pulumi.*.yaml; do
        grep -qE '^\s*fleet:platform:\s*local\s*$' "$file" && { name="${file#stacks/Pulumi.}"; stacks+=("${name%.yaml}"); }
    done
fi
fleet=.venv/bin/copilot-fleet
[[ -x "$fleet" ]] || { echo "verify-under-load: $fleet missing: run scripts/setup.sh first" >&2; exit 1; }
for stack in "${stacks[@]}"; do
    if "$fleet" status --stack "$stack" >/dev/null 2>&1; then
        echo "verify-under-load: stack $stack is running; this check starts and stops its own fleet:" \
             "stop it first (copilot-fleet down --stack $stack) or name other stacks" >&2
        exit 1
    fi
done

# Runs under the burner: each step, timed, with the load average at its end.
steps() {
    local failed=0 stack began
    step() {  # step LABEL COMMAND...: run it, print one line, remember a failure
        local label="$1" status=0; shift
        began=$(date +%s)
        "$@" >"$log/$label.log" 2>&1 || status=$?
        printf '  %-44s %s  %4d s  load %s\n' "$label" "$([[ $status -eq 0 ]] && echo PASS || echo "FAIL ($status)")" \
            "$(( $(date +%s) - began ))" "$(cut -d' ' -f1-3 /proc/loadavg)"
        [[ $status -eq 0 ]] || { failed=1; tail -n 30 "$log/$label.log" | sed 's/^/      /'; }
    }
    for stack in "${stacks[@]}"; do
        step "up --stack $stack" "$fleet" up --stack "$stack"
        step "verify --stack $stack" "$fleet" verify --stack "$stack"
        grep -E '^(OK|FAILED):' "$log/verify --stack $stack.log" | sed 's/^/      /' || true
        step "down --stack $stack" "$fleet" down --stack "$stack"
    done
    if [[ $suite -eq 1 ]]; then
        step "pytest -q (the whole suite)" .venv/bin/python -m pytest -q -p no:cacheprovider
        tail -n 1 "$log/pytest -q (the whole suite).log" | sed 's/^/      /'
    fi
    return "$failed"
}
log="$(mktemp -d "${TMPDIR:-/tmp}/verify-under-load.XXXXXX")"
echo "verify-under-load: stacks ${stacks[*]}$([[ $suite -eq 1 ]] && echo ', then the test suite'); logs in $log"
export -f steps
export log fleet suite
export stacks_list="${stacks[*]}"
scripts/cpu-burner.sh run --procs "$procs" --seconds "$seconds" -- \
    bash -c 'read -r -a stacks <<<"$stacks_list"; steps'
