#!/usr/bin/env bash
# Start a throw-away, single-node SLURM cluster owned by this user, for tests.
#
#   STATE_DIR=$(tests/cluster/slurm_up.sh)      # prints the state dir on stdout
#   . "$STATE_DIR/env.sh"                        # exports SLURM_CONF etc.
#   sbatch --wrap 'hostname'
#   tests/cluster/slurm_down.sh "$STATE_DIR"     # stops exactly what was started
#
# What it does (idempotent where it can be):
#   * installs slurm-wlm and munge with apt-get, but only if a binary is missing;
#   * creates a state dir (mktemp, or $SHARPGAPS_SLURM_DIR if set and empty/absent) with
#     slurm.conf, gres.conf, a fresh munge key, spool/state/log dirs;
#   * starts munged, `slurmctld -D` and `slurmd -D` in the background, each with
#     its own socket/ports/pid file, and records their PIDs in $STATE_DIR/pids;
#   * waits (bounded) until `sinfo` reports the node idle.
# Nothing under /etc is changed and no system service is started, so it coexists
# with a real SLURM installation (it never uses the default ports or /etc/slurm).
#
# Tunables (environment):
#   SHARPGAPS_SLURM_DIR        state dir to use (default: a new mktemp -d)
#   SHARPGAPS_SLURM_CPUS       CPUs the node declares            (default: max(nproc, 8))
#   SHARPGAPS_SLURM_MEM_MB     RealMemory the node declares       (default: physical memory)
#   SHARPGAPS_SLURM_GPUS       GPUs (gres "gpu", no device files)  (default: 4)
#   SHARPGAPS_SLURM_PARTITION  name of the single (default) partition (default: debug)
#   SHARPGAPS_SLURM_MIN_JOB_AGE  MinJobAge in seconds; keep >= 3x the plugin's
#                         init-seconds-before-status-checks   (default: 300)
#   SHARPGAPS_SLURM_UP_TIMEOUT seconds to wait for the node to become idle (default: 60)
#
# The node declares more CPUs/memory/GPUs than the machine may have on purpose
# (SlurmdParameters=config_overrides): the test is about *submission and
# scheduling*, so the production profile's requests (e.g. `--gpus=1
# --cpus-per-gpu=4`) must be schedulable here unchanged. Nothing is enforced
# (no cgroups), jobs merely time-share the real cores. The fake GPUs' device
# files are symlinks to /dev/null; SLURM still sets CUDA_VISIBLE_DEVICES=0,1,..
# in a job, so code must check torch.cuda.is_available() (on a machine without
# a GPU it is False and the job runs on the CPU).
set -euo pipefail

log() { echo "slurm_up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --------------------------------------------------------------------------- install
need_install=0
for b in munged slurmctld slurmd sbatch srun squeue sinfo scontrol scancel; do
    command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || need_install=1
done
if (( need_install )); then
    command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get to install them"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "slurm-wlm/munge missing; need root (or sudo) to apt-get install them"
        SUDO="sudo"
    fi
    log "installing slurm-wlm and munge with apt-get"
    timeout 600 $SUDO apt-get update -qq >&2 || die "apt-get update failed"
    timeout 900 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends slurm-wlm munge >&2 || die "apt-get install slurm-wlm munge failed"
fi
export PATH="$PATH:/usr/sbin:/sbin"
for b in munged slurmctld slurmd sbatch srun squeue sinfo scontrol scancel; do
    command -v "$b" >/dev/null || die "$b not found after install"
done

# --------------------------------------------------------------------------- state dir
if [[ -n "${SHARPGAPS_SLURM_DIR:-}" ]]; then
    STATE="$SHARPGAPS_SLURM_DIR"
    if [[ -e "$STATE/pids" ]]; then
        die "$STATE already holds a running test cluster (pids file exists); run slurm_down.sh $STATE first"
    fi
    mkdir -p "$STATE"
else
    STATE=$(mktemp -d "${TMPDIR:-/tmp}/sharpgaps-slurm.XXXXXX")
fi
STATE=$(cd "$STATE" && pwd -P)
chmod 700 "$STATE"
mkdir -p "$STATE"/{munge,ctld,spool,log}
chmod 700 "$STATE/munge"

# If anything below fails, tear down what was started so far.
cleanup_on_error() {
    local rc=$?
    if (( rc != 0 )); then
        log "start-up failed (rc=$rc); logs follow and the cluster is stopped"
        for f in "$STATE"/log/*; do [[ -f $f ]] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }; done
        SHARPGAPS_SLURM_KEEP_STATE=${SHARPGAPS_SLURM_KEEP_STATE:-0} "$(dirname "${BASH_SOURCE[0]}")/slurm_down.sh" "$STATE" >&2 || true
    fi
}
trap cleanup_on_error EXIT

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

NODE=$(hostname -s)
CPUS=${SHARPGAPS_SLURM_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}
MEM=${SHARPGAPS_SLURM_MEM_MB:-$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)}
GPUS=${SHARPGAPS_SLURM_GPUS:-4}
PART=${SHARPGAPS_SLURM_PARTITION:-debug}
MINAGE=${SHARPGAPS_SLURM_MIN_JOB_AGE:-300}
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
while [[ $SLURMD_PORT == "$CTLD_PORT" ]]; do SLURMD_PORT=$(free_port); done
USER_NAME=$(id -un)

# --------------------------------------------------------------------------- config
# The munge key: 1 KiB of randomness, only for this cluster.
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"

GRES_NODE=""
GRES_TYPES=""
if (( GPUS > 0 )); then
    GRES_TYPES="GresTypes=gpu"
    GRES_NODE="Gres=gpu:$GPUS"
    # SLURM 22.05 ignores a gpu Count without File=, and File= must be a
    # character device: the fake GPUs are symlinks to /dev/null.
    mkdir -p "$STATE/dev"
    for (( i = 0; i < GPUS; i++ )); do ln -sf /dev/null "$STATE/dev/gpu$i"; done
    cat >"$STATE/gres.conf" <<EOF
# Fake GPUs (symlinks to /dev/null): they exist only for scheduling.
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/dev/gpu[0-$(( GPUS - 1 ))]
EOF
fi

# Task prolog: slurmstepd runs it before every task of every job step and
# copies its "print ..." lines to the job's stdout, i.e. into the SLURM log that
# Snakemake keeps for the job. That line is run_slurm_test.sh's proof that a
# job really ran inside SLURM allocation N, independent of the workflow.
cat >"$STATE/task_prolog.sh" <<'EOF'
#!/bin/sh
echo "print [slurm task prolog] SLURM_JOB_ID=${SLURM_JOB_ID:-} SLURM_STEP_ID=${SLURM_STEP_ID:-} node=${SLURMD_NODENAME:-}"
EOF
chmod 755 "$STATE/task_prolog.sh"

cat >"$STATE/slurm.conf" <<EOF
# Throw-away single-node test cluster written by tests/cluster/slurm_up.sh
ClusterName=sharpgapstest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$USER_NAME
SlurmdUser=$USER_NAME
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munged.sock
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=${SHARPGAPS_SLURM_SLURMD_DEBUG:-info}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
MpiDefault=none
TaskProlog=$STATE/task_prolog.sh
MinJobAge=$MINAGE
ReturnToService=2
InactiveLimit=0
KillWait=5
SlurmdTimeout=60
SchedulerType=sched/backfill
DefMemPerCPU=1000
$GRES_TYPES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=$PART Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

# srun shim. snakemake-executor-plugin-slurm-jobstep (0.6.x) removes every
# SLURM_* variable, SLURM_CONF included, from the environment of the `srun` it
# runs inside each job; on a real cluster srun then reads /etc/slurm/slurm.conf,
# here it would find nothing ("Could not establish a configuration source").
# The shim (first on PATH via env.sh) restores SLURM_CONF from SHARPGAPS_SLURM_CONF
# and execs the real srun.
mkdir -p "$STATE/bin"
REAL_SRUN=$(command -v srun) || die "srun not found"
{
    echo '#!/bin/sh'
    echo '# written by tests/cluster/slurm_up.sh (see the comment there)'
    echo 'if [ -z "${SLURM_CONF:-}" ] && [ -n "${SHARPGAPS_SLURM_CONF:-}" ]; then'
    echo '    SLURM_CONF=$SHARPGAPS_SLURM_CONF; export SLURM_CONF'
    echo 'fi'
    echo "exec '$REAL_SRUN' \"\$@\""
} >"$STATE/bin/srun"
chmod 755 "$STATE/bin/srun"

cat >"$STATE/env.sh" <<EOF
# source me: environment for the test cluster in $STATE
export SLURM_CONF="$STATE/slurm.conf"
export SHARPGAPS_SLURM_CONF="$STATE/slurm.conf"
export SHARPGAPS_SLURM_DIR="$STATE"
export PATH="$STATE/bin:\$PATH"
export SHARPGAPS_SLURM_PARTITION="$PART"
export SHARPGAPS_SLURM_CTLD_LOG="$STATE/log/slurmctld.log"
export SHARPGAPS_SLURM_JOBCOMP_LOG="$STATE/log/jobcomp.log"
case ":\$PATH:" in *:/usr/sbin:*) ;; *) export PATH="\$PATH:/usr/sbin:/sbin" ;; esac
EOF
export SLURM_CONF="$STATE/slurm.conf"
: >"$STATE/pids"

# --------------------------------------------------------------------------- start
# Each daemon runs in the foreground of its own background subshell; the PID
# recorded is the daemon's own (exec), so slurm_down.sh can stop exactly it.
start_daemon() {  # name cmd...
    local name=$1; shift
    # SHARPGAPS_SLURM_DAEMON marks the daemons (and the slurmstepd they fork)
    # so that slurm_down.sh can find leftovers of exactly this cluster.
    ( SHARPGAPS_SLURM_DAEMON="$STATE" exec "$@" ) >"$STATE/log/$name.out" 2>&1 &
    local pid=$!
    echo "$name $pid" >>"$STATE/pids"
    log "started $name (pid $pid)"
}

start_daemon munged munged -F --force \
    --key-file="$STATE/munge/munge.key" \
    --socket="$STATE/munge/munged.sock" \
    --pid-file="$STATE/munge/munged.pid" \
    --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/munged.seed"

wait_for() {  # seconds description command...
    local secs=$1 what=$2; shift 2
    local deadline=$(( SECONDS + secs )) name pid
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < deadline )) || die "timed out after ${secs}s waiting for $what"
        while read -r name pid; do   # a daemon that died won't come back: fail fast
            kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited while waiting for $what"
        done <"$STATE/pids"
        sleep 0.5
    done
}
wait_for 20 "munged socket" test -S "$STATE/munge/munged.sock"
if command -v munge >/dev/null && command -v unmunge >/dev/null; then
    wait_for 20 "munge round trip" bash -c \
        "munge -n -S '$STATE/munge/munged.sock' | unmunge -S '$STATE/munge/munged.sock'"
fi

start_daemon slurmctld slurmctld -D -i -f "$STATE/slurm.conf"
wait_for 30 "slurmctld to answer" scontrol ping
start_daemon slurmd slurmd -D -N "$NODE" -f "$STATE/slurm.conf"

UP_TIMEOUT=${SHARPGAPS_SLURM_UP_TIMEOUT:-60}
node_idle() { [[ $(sinfo -h -n "$NODE" -o '%t' 2>/dev/null | head -n1) == idle ]]; }
wait_for "$UP_TIMEOUT" "node $NODE to become idle (sinfo)" node_idle

log "cluster up: node $NODE, partition $PART, $CPUS CPUs, ${MEM} MB, $GPUS fake GPUs, state $STATE"
sinfo -N -o '%N %P %t %c %m %G' >&2
trap - EXIT
echo "$STATE"
