#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (CI and local testing of `otf submit`).
#
#   scripts/slurm/start.sh              install slurm-wlm, munge, slurm-wlm-torque if missing, then start
#   scripts/slurm/start.sh --no-install fail instead of installing
#
# Runs as root. Writes /etc/slurm/slurm.conf for this host (a backup of an existing one is kept
# as slurm.conf.otf-backup), starts munged as the munge user, then slurmctld and slurmd, and waits
# until the node is idle. Pid files: /run/munge/munged.pid, /run/slurmctld.pid, /run/slurmd.pid.
# The daemons this script starts are listed in /run/otf-slurm.started; scripts/slurm/stop.sh stops
# exactly those. Idempotent: daemons already running are left alone (and not listed).
set -euo pipefail

install=1
for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "start.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

log() { echo "slurm/start.sh: $*" >&2; }
started_list=/run/otf-slurm.started
started() { echo "$1" >> "$started_list"; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (it writes /etc/slurm and starts daemons)"; exit 2
fi

# ------------------------------------------------------------------ packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v qsub >/dev/null; then
    if [[ $install -eq 0 ]]; then
        log "slurm-wlm / munge / slurm-wlm-torque are not installed (run without --no-install)"; exit 3
    fi
    log "installing slurm-wlm munge slurm-wlm-torque"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge slurm-wlm-torque
fi

host=$(hostname -s)

# ------------------------------------------------------------------ already up?
if [[ -f /run/slurmctld.pid ]] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null \
        && timeout 10 sinfo -h -n "$host" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    log "cluster already running on $host"
    exit 0
fi

# ------------------------------------------------------------------ munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
install -d -o munge -g munge -m 0755 /run/munge
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! { [[ -f /run/munge/munged.pid ]] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    started munged
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n </dev/null | unmunge >/dev/null || { log "munge does not work"; exit 1; }

# ------------------------------------------------------------------ slurm.conf
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
conf=/etc/slurm/slurm.conf
if [[ -f $conf ]] && ! grep -q '^# written by otf_flows scripts/slurm/start.sh' "$conf"; then
    cp -p "$conf" "$conf.otf-backup"
fi
cat > "$conf" <<CONF
# written by otf_flows scripts/slurm/start.sh for a single-node test cluster
ClusterName=otf
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# short kill grace time: scancel / walltime → SIGTERM, SIGKILL 5 s later
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=300
Waittime=0
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
# PBS wrappers (slurm-wlm-torque) read the same file; cgroup.conf is not used (proctrack/linuxproc)

# ------------------------------------------------------------------ daemons
if ! { [[ -f /run/slurmctld.pid ]] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; }; then
    log "starting slurmctld"
    /usr/sbin/slurmctld -c
    started slurmctld
fi
if ! { [[ -f /run/slurmd.pid ]] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; }; then
    log "starting slurmd"
    /usr/sbin/slurmd
    started slurmd
fi

for i in $(seq 120); do
    state=$(timeout 5 sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
        idle*|mixed*|allocated*) log "node $host is $state (after ${i}x0.5 s)"; exit 0 ;;
        down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
log "node $host did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log"
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
