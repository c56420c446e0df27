#!/usr/bin/env bash
# CPU burner: keeps every core busy so that tests, `up` and `verify` can be proven on a loaded machine.
#
#   scripts/cpu-burner.sh run [--procs N] [--seconds S] -- COMMAND...   burn while COMMAND runs, then stop;
#                                                                       exits with COMMAND's status
#   scripts/cpu-burner.sh start [--procs N] [--seconds S] [--pidfile F] burn in the background (prints the pidfile)
#   scripts/cpu-burner.sh stop [--pidfile F]                            stop what `start` started, by PID
#
# N busy loops (default: 3 per core, so the load average sits well above the number of cores), each under
# `timeout --signal=KILL S` (default 3600 s): a hard bound that holds even if this script is killed with SIGKILL
# and never gets to stop them. They are stopped by the PIDs this script recorded, never by name. The load
# average is printed when the burn starts and when it stops.
set -euo pipefail

usage() { { echo 'usage:'; sed -n '4,7p' "$0" | sed 's/^# \{0,1\}/  /'; } >&2; exit 2; }

cores=$(nproc)
procs=$((3 * cores))
seconds=3600
pidfile="${TMPDIR:-/tmp}/cpu-burner.$(id -u).pids"

mode="${1:-}"; [[ -n "$mode" ]] || usage; shift
while [[ $# -gt 0 ]]; do
    case "$1" in
        --procs) procs="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --pidfile) pidfile="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "cpu-burner: unknown option $1" >&2; usage ;;
    esac
done
[[ "$procs" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "cpu-burner: --procs must be 1 to 9999, not '$procs'" >&2; exit 2; }
[[ "$seconds" =~ ^[1-9][0-9]{0,5}$ ]] || { echo "cpu-burner: --seconds must be 1 to 999999, not '$seconds'" >&2; exit 2; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

start_burners() {
    if [[ -s "$pidfile" ]]; then
        echo "cpu-burner: $pidfile exists: a burn is running (stop it first: $0 stop --pidfile $pidfile)" >&2
        exit 1
    fi
    : >"$pidfile"
    for _ in $(seq "$procs"); do
        # `timeout` forwards SIGTERM to the loop and kills it with SIGKILL at the bound in any case.
        timeout --signal=KILL "$seconds" sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &
        echo "$!" >>"$pidfile"
    done
    echo "cpu-burner: $procs busy processes on $cores cores for at most $seconds s (pids in $pidfile);" \
         "load average $(loadavg)" >&2
}

stop_burners() {
    [[ -f "$pidfile" ]] || { echo "cpu-burner: no burn recorded in $pidfile" >&2; return 0; }
    local pid stopped=0
    while read -r pid; do
        # Only a PID that is still one of our `timeout` processes: a recycled PID is left alone.
        if [[ -n "$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == timeout ]]; then
            kill -TERM "$pid" 2>/dev/null && stopped=$((stopped + 1))
        fi
    done <"$pidfile"
    rm -f "$pidfile"
    echo "cpu-burner: stopped $stopped processes; load average $(loadavg)" >&2
}

case "$mode" in
    start) start_burners; echo "$pidfile" ;;
    stop) stop_burners ;;
    run)
        [[ $# -gt 0 ]] || { echo "cpu-burner: run needs a command after --" >&2; usage; }
        pidfile="$(mktemp "${TMPDIR:-/tmp}/cpu-burner.XXXXXX")"; rm -f "$pidfile"
        start_burners
        trap stop_burners EXIT
        trap 'exit 130' INT TERM
        # The 1-minute load average every 15 s while the command runs (bounded like the burners).
        samples="$pidfile.load"
        timeout --signal=KILL "$seconds" sh -c "while :; do cut -d' ' -f1 /proc/loadavg; sleep 15; done" \
            >"$samples" 2>/dev/null </dev/null &
        echo "$!" >>"$pidfile"
        began=$(date +%s)
        status=0; "$@" || status=$?
        echo "cpu-burner: the command ended with status $status after $(( $(date +%s) - began )) s;" \
             "1-minute load average while it ran: $(awk 'NR == 1 || $1 < lo { lo = $1 } $1 > hi { hi = $1 }
             { sum += $1 } END { if (NR) printf "min %.1f, mean %.1f, max %.1f (%d samples)", lo, sum / NR, hi, NR }' \
             "$samples")" >&2
        rm -f "$samples"
        exit "$status" ;;
    *) usage ;;
esac
