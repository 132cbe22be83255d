#!/bin/bash
# otf_flows FireWorks pilot: inside ONE batch allocation, one worker per job kind pulls that kind's fireworks
# from the LaunchPad -- of every campaign in it -- until nothing of those kinds is ready or running, or
# until the allocation's time is nearly up. No firework waits in the batch queue on its own.
#
# Started by launchers/pilot.slurm and launchers/pilot.pbs (docs/tutorials/cluster.md, "FireWorks pilot"); edit those,
# not this file. Settings, from the environment:
#
#   OTF_FW_DIR        directory with my_launchpad.yaml and my_fworker_<kind>.yaml (required; on a file
#                     system the compute nodes see -- not $HOME where the nodes do not mount it)
#   OTF_PILOT_TIME    the time left in the allocation, [D-]HH:MM:SS, MM:SS or seconds (required; pilot.slurm
#                     reads it from squeue, pilot.pbs from its walltime)
#   OTF_PILOT_MARGIN  seconds before the end of OTF_PILOT_TIME after which no worker starts a firework
#                     (default 1800; longer than the longest firework)
#   OTF_PILOT_WORKERS kinds to run a worker for (default "dft md fit light"; "dft md fit" when the campaigns
#                     set execution.light.inline: true)
#   OTF_PILOT_CATEGORIES  FireWorks categories those workers pull (default: the kinds), for the end test
#   OTF_PILOT_DIR     launch directories, one sub-directory per kind, and the workers' logs
#                     (default ./otf-pilot-<job id>)
#   OTF_PILOT_SLEEP   seconds between two looks of an idle worker at the LaunchPad (default 30)
#   OTF_PILOT_IDLE    looks in a row that find nothing ready or running before the pilot ends (default 2)
#   OTF_RLAUNCH, OTF_LPAD  the FireWorks commands (default rlaunch, lpad)
#
# Each worker runs `rlaunch rapidfire --max_loops 1` in a loop: every ready firework of its kind, one after
# the other, then a pause. A firework started before the stop time runs to its end; one cut by the walltime
# stays RUNNING in the LaunchPad: `lpad detect_lostruns --rerun` (otf jobs are idempotent). Exit code 0
# when the pilot ran out of work, 3 when it stopped at its stop time with work left (the batch scripts
# then resubmit), 2 for bad settings.
set -u

fw_dir=${OTF_FW_DIR:?set OTF_FW_DIR to the directory of my_launchpad.yaml and my_fworker_<kind>.yaml}
time_left=${OTF_PILOT_TIME:?set OTF_PILOT_TIME to the time left in the allocation, e.g. 23:59:00}
margin=${OTF_PILOT_MARGIN:-1800}
read -r -a workers <<< "${OTF_PILOT_WORKERS:-dft md fit light}"
read -r -a categories <<< "${OTF_PILOT_CATEGORIES:-${workers[*]}}"
pilot_dir=${OTF_PILOT_DIR:-$PWD/otf-pilot-${SLURM_JOB_ID:-${PBS_JOBID:-$$}}}
sleep_s=${OTF_PILOT_SLEEP:-30}
idle_looks=${OTF_PILOT_IDLE:-2}
read -r -a rlaunch <<< "${OTF_RLAUNCH:-rlaunch}"
read -r -a lpad <<< "${OTF_LPAD:-lpad}"

fail() { echo "otf pilot: $*" >&2; exit 2; }
fw_dir=$(cd "$fw_dir" 2>/dev/null && pwd) || fail "OTF_FW_DIR=$OTF_FW_DIR is not a directory"
launchpad=$fw_dir/my_launchpad.yaml
for file in "$launchpad" "${workers[@]/#/$fw_dir/my_fworker_}"; do
    [[ $file == *.yaml ]] || file=$file.yaml
    [[ -f $file ]] || fail "$file does not exist (copy it from launchers/)"
done
to_seconds() {  # [D-]HH:MM:SS, HH:MM:SS, MM:SS, SS; after a day count D-HH and D-HH:MM too (SLURM's forms)
    local t=$1 days=0 total=0 part parts
    [[ $t =~ ^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$ ]] || return 1
    if [[ $t == *-* ]]; then
        days=${t%%-*} t=${t#*-}
        while [[ ${t//[^:]/} != "::" ]]; do t=$t:00; done
    fi
    IFS=: read -r -a parts <<< "$t"
    for part in "${parts[@]}"; do total=$((total * 60 + 10#$part)); done
    echo $((10#$days * 86400 + total))
}
total=$(to_seconds "$time_left") || fail "OTF_PILOT_TIME=$time_left is not [D-]HH:MM:SS, MM:SS or a number of seconds"
[[ $margin =~ ^[0-9]+$ ]] || fail "OTF_PILOT_MARGIN=$margin is not a number of seconds"
seconds=$((total - margin))
((seconds > 0)) || fail "OTF_PILOT_TIME=$time_left leaves no time after OTF_PILOT_MARGIN=$margin s"
mkdir -p "$pilot_dir" && pilot_dir=$(cd "$pilot_dir" && pwd) || fail "cannot create $pilot_dir"
stop_at=$((SECONDS + seconds))
done_file=$pilot_dir/.done
rm -f "$done_file"
echo "otf pilot: workers ${workers[*]} on $(hostname), launches in $pilot_dir, new fireworks until $(date -d "+$seconds seconds" '+%F %T')"

worker() {
    local kind=$1 left
    mkdir -p "$pilot_dir/$kind"
    cd "$pilot_dir/$kind" || return
    while [[ ! -e $done_file ]]; do
        left=$((stop_at - SECONDS))
        ((left > 0)) || break
        "${rlaunch[@]}" -l "$launchpad" -w "$fw_dir/my_fworker_$kind.yaml" rapidfire --max_loops 1 --sleep 1 \
            --timeout "$left" >>"$pilot_dir/$kind.log" 2>&1
        sleep "$sleep_s"
    done
}

# the end test: nothing of the pilot's categories ready or running (fireworks that wait only on a
# fizzled parent do not keep it alive)
printf -v cats '"%s", ' "${categories[@]}"
query="{\"state\": {\"\$in\": [\"READY\", \"RUNNING\"]}, \"spec._category\": {\"\$in\": [${cats%, }]}}"
pending() {
    "${lpad[@]}" -l "$launchpad" get_fws -q "$query" -d count 2>>"$pilot_dir/pilot.log" | grep -E '^[0-9]+$' | tail -n 1
}

pids=()
for kind in "${workers[@]}"; do
    worker "$kind" &
    pids+=($!)
done
idle=0
rc=3
while ((SECONDS < stop_at)); do
    sleep "$sleep_s"
    n=$(pending)
    if [[ -z $n ]]; then
        echo "otf pilot: lpad get_fws failed (see $pilot_dir/pilot.log)" >&2
        continue
    fi
    if ((n == 0)); then idle=$((idle + 1)); else idle=0; fi
    if ((idle >= idle_looks)); then
        rc=0
        break
    fi
done
touch "$done_file"
wait "${pids[@]}"
if ((rc == 3)) && [[ $(pending) == 0 ]]; then rc=0; fi
echo "otf pilot: $([[ $rc == 0 ]] && echo 'no work left' || echo 'stop time reached with work left'); logs in $pilot_dir"
exit "$rc"
