#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm/start.sh.
#
#   scripts/slurm/stop.sh         stop the daemons start.sh started (listed in /run/otf-slurm.started)
#   scripts/slurm/stop.sh --all   stop slurmd, slurmctld and munged, whoever started them
#
# Jobs still queued are cancelled first. Each daemon is stopped by the process id in its pid file
# (/run/slurmd.pid, /run/slurmctld.pid, /run/munge/munged.pid) and nothing else is signalled.
set -uo pipefail

started_list=/run/otf-slurm.started
all=0
for arg in "$@"; do
    case "$arg" in
        --all) all=1 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "stop.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

log() { echo "slurm/stop.sh: $*" >&2; }

wanted() {  # daemon name
    [[ $all -eq 1 ]] || { [[ -f $started_list ]] && grep -qx "$1" "$started_list"; }
}

stop_pidfile() {  # name pidfile
    local name=$1 file=$2 pid
    wanted "$name" || { log "$name: not started by start.sh, left alone"; return 0; }
    [[ -f $file ]] || { log "$name: no pid file $file"; return 0; }
    pid=$(cat "$file")
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        log "$name: not running"; rm -f "$file"; return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { log "$name ($pid) stopped"; rm -f "$file"; return 0; }
        sleep 0.2
    done
    log "$name ($pid) did not stop in 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    rm -f "$file"
}

if wanted slurmctld && command -v scancel >/dev/null && [[ -f /run/slurmctld.pid ]] \
        && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
    timeout 10 scancel --user="$(id -un)" >/dev/null 2>&1 || true
fi
stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
stop_pidfile munged /run/munge/munged.pid
rm -f "$started_list"
exit 0
