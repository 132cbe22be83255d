#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm/start.sh.
#
# Cancels remaining jobs, then stops slurmd, slurmctld and munged by the process ids in their
# pid files (/run/slurmd.pid, /run/slurmctld.pid, /run/munge/munged.pid) and nothing else.
#   scripts/slurm/stop.sh            stop all three
#   scripts/slurm/stop.sh --keep-munge  leave munged running
set -uo pipefail

keep_munge=0
[[ ${1:-} == --keep-munge ]] && keep_munge=1

log() { echo "slurm/stop.sh: $*" >&2; }

stop_pidfile() {  # name pidfile
    local name=$1 file=$2 pid
    [[ -f $file ]] || { log "$name: no pid file $file"; return 0; }
    pid=$(cat "$file")
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        log "$name: not running"; rm -f "$file"; return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || { log "$name ($pid) stopped"; rm -f "$file"; return 0; }; sleep 0.2; done
    log "$name ($pid) did not stop in 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    rm -f "$file"
}

if command -v scancel >/dev/null && [[ -f /run/slurmctld.pid ]] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
    timeout 10 scancel --user=root >/dev/null 2>&1 || true
fi
stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
[[ $keep_munge -eq 1 ]] || stop_pidfile munged /run/munge/munged.pid
exit 0
