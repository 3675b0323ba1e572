#!/usr/bin/env bash
# Stop the test cluster started by tests/cluster/slurm_up.sh and remove its state dir.
#
#   tests/cluster/slurm_down.sh STATE_DIR        (or SHARPGAPS_SLURM_DIR in the environment)
#   SHARPGAPS_SLURM_KEEP_STATE=1 ...                  keep the state dir (logs) after stopping
#
# Only processes that belong to this cluster are touched:
#   1. its jobs are cancelled with scancel (they are asked for by this cluster's
#      SLURM_CONF, so no other cluster is affected);
#   2. the daemon PIDs recorded in STATE_DIR/pids are sent SIGTERM (then SIGKILL
#      after a grace period), each only if /proc/PID/cmdline still names the
#      expected daemon and this state dir, so a recycled PID is never hit;
#   3. leftovers (slurmstepd and job processes that outlived slurmd) are found
#      by markers in their environment that only this cluster's processes carry
#      (see below); the caller and its ancestors are never touched.
# Never kills by process name.
set -uo pipefail

log() { echo "slurm_down: $*" >&2; }

STATE=${1:-${SHARPGAPS_SLURM_DIR:-}}
[[ -n "$STATE" ]] || { log "usage: $0 STATE_DIR"; exit 2; }
[[ -d "$STATE" ]] || { log "no state dir $STATE; nothing to do"; exit 0; }
STATE=$(cd "$STATE" && pwd -P)
[[ -f "$STATE/slurm.conf" || -f "$STATE/pids" ]] || {
    log "$STATE does not look like a slurm_up.sh state dir; refusing"; exit 2; }
export SLURM_CONF="$STATE/slurm.conf"
export PATH="$PATH:/usr/sbin:/sbin"

alive() { [[ -d /proc/$1 ]] && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"; }
cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline"; }

# 1. cancel this cluster's jobs while the daemons still run
ctld_pid=$(awk '$1=="slurmctld"{print $2}' "$STATE/pids" 2>/dev/null)
if [[ -n "$ctld_pid" ]] && alive "$ctld_pid"; then
    ids=$(timeout 10 squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')
    if [[ -n "${ids// /}" ]]; then
        log "cancelling jobs: $ids"
        # shellcheck disable=SC2086
        timeout 10 scancel $ids 2>/dev/null || true
        for _ in $(seq 1 20); do
            [[ -z "$(timeout 5 squeue -h -t RUNNING,PENDING,COMPLETING -o '%i' 2>/dev/null)" ]] && break
            sleep 0.5
        done
    fi
fi

# 2. stop the recorded daemons, slurmd first, munged last
stop_pid() {  # name pid
    local name=$1 pid=$2
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    alive "$pid" || { log "$name (pid $pid) already gone"; return 0; }
    local cl; cl=$(cmdline "$pid")
    if [[ "$cl" != *"$name"* || "$cl" != *"$STATE"* ]]; then
        log "pid $pid is no longer our $name ('$cl'); not touching it"; return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
    if alive "$pid"; then
        log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    log "stopped $name (pid $pid)"
}
if [[ -f "$STATE/pids" ]]; then
    for name in slurmd slurmctld munged; do
        while read -r n pid; do
            [[ "$n" == "$name" ]] && stop_pid "$n" "$pid"
        done <"$STATE/pids"
    done
fi

# 3. leftovers that carry this cluster's SLURM_CONF in their environment
protected=" "
p=$$
while [[ "$p" =~ ^[0-9]+$ && "$p" -gt 1 ]]; do
    protected+="$p "
    p=$(awk '/^PPid:/{print $2}' "/proc/$p/status" 2>/dev/null)
done
# A leftover is a process that carries this cluster's daemon marker, or this
# cluster's SLURM_CONF together with either SLURM_JOB_ID (a job's process) or a
# slurmstepd command line. A shell that merely sourced env.sh matches neither.
for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ "$protected" == *" $pid "* ]] && continue
    envs=$(tr '\0' '\n' 2>/dev/null <"$d/environ") || continue
    if grep -qxF "SHARPGAPS_SLURM_DAEMON=$STATE" <<<"$envs" \
        || { grep -qxF "SLURM_CONF=$STATE/slurm.conf" <<<"$envs" \
             && { grep -q '^SLURM_JOB_ID=' <<<"$envs" || [[ "$(cmdline "$pid")" == slurmstepd* ]]; }; }; then
        log "killing leftover pid $pid ($(cmdline "$pid"))"
        kill -KILL "$pid" 2>/dev/null || true
    fi
done

if [[ "${SHARPGAPS_SLURM_KEEP_STATE:-0}" == 1 ]]; then
    rm -f "$STATE/pids"
    log "kept state dir $STATE"
else
    rm -rf -- "$STATE"
    log "removed $STATE"
fi
