#!/usr/bin/env bash
# Run a Snakemake workflow through a real (throw-away, single-node) SLURM cluster
# and prove that its jobs went through sbatch; optionally compare the outputs
# with a local run of the same target.
#
# Usage:
#   tests/cluster/run_slurm_test.sh [--compare GLOB]... [--timeout SECONDS]
#                                   WORKFLOW_DIR CONFIGFILE TARGET...
# Example (the real pipeline on its test config):
#   tests/cluster/run_slurm_test.sh --compare 'results/**/*.json' . .test/config.yaml all
#
# Steps:
#   1. copies WORKFLOW_DIR twice into a scratch dir (without .git, .venv,
#      .snakemake, results/, caches), so nothing in WORKFLOW_DIR is touched and
#      no old output is reused; the copies' siblings are symlinks to
#      WORKFLOW_DIR's siblings, so config paths like ../shared/data still work;
#   2. writes the effective workflow profile: the production SLURM profile
#      (WORKFLOW_DIR/profiles/slurm, else this repo's profiles/slurm) minus the
#      site-specific keys named in the test profile, with the test profile
#      (tests/cluster/profile/config.yaml) merged over it;
#   3. starts SLURM (slurm_up.sh) and always stops it again (trap -> slurm_down.sh);
#   4. runs `snakemake TARGET... --workflow-profile <effective> --configfile
#      CONFIGFILE` in the first copy under `timeout`;
#   5. checks the evidence, failing with a message if any is missing:
#        a. Snakemake exited 0;
#        b. every job Snakemake ran with an action (not a localrule) was
#           submitted: a "Job N has been submitted with SLURM jobid X" line;
#        c. each such SLURM job X completed with exit status 0 according to
#           slurmctld's log ("_job_complete: JobId=X WEXITSTATUS 0"), and the
#           number of "_job_complete: JobId=... done" lines >= the number of
#           jobs Snakemake submitted;
#        d. each job's SLURM log (.snakemake/slurm_logs/...) exists and shows
#           SLURM_JOB_ID=X, printed by the test cluster's TaskProlog for the
#           batch step and the srun step: the rule really ran inside allocation X;
#   6. with --compare: runs the same target locally (workflow's/repo's
#      profiles/default) in the second copy and requires that every GLOB
#      (relative to the workflow dir, `**` allowed) matches the same non-empty
#      set of files in both runs, with identical sha256.
#
# Environment (all optional):
#   SHARPGAPS_SLURM_TIMEOUT        seconds for each snakemake run (default 1800)
#   SHARPGAPS_SLURM_BASE_PROFILE   production profile dir, or "none" (see step 2)
#   SHARPGAPS_SLURM_PROFILE        test profile dir (default tests/cluster/profile)
#   SHARPGAPS_SLURM_LOCAL_PROFILE  profile dir of the local run, or "none"
#   SHARPGAPS_SLURM_COMPARE        space-separated globs, same as --compare
#   SHARPGAPS_SLURM_EXTRA_ARGS     extra snakemake arguments for both runs
#   SHARPGAPS_SLURM_WORKDIR        scratch dir (default: a new mktemp -d, removed
#                                  on success unless SHARPGAPS_SLURM_KEEP=1)
#   SHARPGAPS_SLURM_KEEP=1         keep the scratch dir and the SLURM state/logs
#   SNAKEMAKE                      snakemake executable (default: PATH, else .venv/bin)
#   plus the SHARPGAPS_SLURM_* knobs of slurm_up.sh (CPUs, memory, GPUs, partition).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
say() { echo "run_slurm_test: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

COMPARE=()
read -r -a COMPARE <<<"${SHARPGAPS_SLURM_COMPARE:-}"
TIMEOUT=${SHARPGAPS_SLURM_TIMEOUT:-1800}
while (( $# )); do
    case "$1" in
        --compare) [[ $# -ge 2 ]] || usage; COMPARE+=("$2"); shift 2 ;;
        --compare=*) COMPARE+=("${1#*=}"); shift ;;
        --timeout) [[ $# -ge 2 ]] || usage; TIMEOUT=$2; shift 2 ;;
        --timeout=*) TIMEOUT=${1#*=}; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) say "unknown option $1"; usage ;;
        *) break ;;
    esac
done
(( $# >= 3 )) || usage
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || fail "--timeout must be whole seconds, got '$TIMEOUT'"

WF=$(cd "$1" 2>/dev/null && pwd -P) || fail "workflow dir '$1' not found"
CONFIG_ARG=$2
shift 2
TARGETS=("$@")

if [[ -f "$CONFIG_ARG" ]]; then
    CONFIG=$(cd "$(dirname "$CONFIG_ARG")" && pwd -P)/$(basename "$CONFIG_ARG")
elif [[ -f "$WF/$CONFIG_ARG" ]]; then
    CONFIG="$WF/$CONFIG_ARG"
else
    fail "config file '$CONFIG_ARG' not found (neither relative to $PWD nor to $WF)"
fi
# A config inside the workflow dir is used from the copy (its relative paths
# then mean the same thing); one outside is used where it is.
case "$CONFIG" in
    "$WF"/*) CONFIG_IN_RUN=${CONFIG#"$WF"/} ;;
    *) CONFIG_IN_RUN=$CONFIG ;;
esac

if [[ -n "${SNAKEMAKE:-}" ]]; then
    SMK=$SNAKEMAKE
elif command -v snakemake >/dev/null; then
    SMK=$(command -v snakemake)
elif [[ -x "$REPO/.venv/bin/snakemake" ]]; then
    SMK="$REPO/.venv/bin/snakemake"
else
    fail "snakemake not found (activate the venv or set SNAKEMAKE)"
fi
SMK_DIR=$(cd "$(dirname "$SMK")" && pwd -P)
PY=python3
[[ -x "$SMK_DIR/python" ]] && PY="$SMK_DIR/python"
# Jobs run with the submitting environment (sbatch --export=ALL): make sure the
# snakemake installation is on PATH there too.
export PATH="$SMK_DIR:$PATH"
"$PY" -c 'import yaml' 2>/dev/null || fail "$PY cannot import yaml"

pick_profile() {  # explicit-value workflow-subdir
    local explicit=$1 sub=$2
    if [[ -n "$explicit" ]]; then
        [[ "$explicit" == none ]] && { echo none; return; }
        [[ -f "$explicit/config.yaml" ]] || fail "profile '$explicit' has no config.yaml"
        (cd "$explicit" && pwd -P); return
    fi
    if [[ -f "$WF/profiles/$sub/config.yaml" ]]; then echo "$WF/profiles/$sub"
    elif [[ -f "$REPO/profiles/$sub/config.yaml" ]]; then echo "$REPO/profiles/$sub"
    else echo none; fi
}
BASE_PROFILE=$(pick_profile "${SHARPGAPS_SLURM_BASE_PROFILE:-}" slurm)
LOCAL_PROFILE=$(pick_profile "${SHARPGAPS_SLURM_LOCAL_PROFILE:-}" default)
TEST_PROFILE=$(cd "${SHARPGAPS_SLURM_PROFILE:-$HERE/profile}" && pwd -P)
[[ -f "$TEST_PROFILE/config.yaml" ]] || fail "test profile $TEST_PROFILE has no config.yaml"
EXTRA=()
read -r -a EXTRA <<<"${SHARPGAPS_SLURM_EXTRA_ARGS:-}"

# --------------------------------------------------------------------------- scratch
if [[ -n "${SHARPGAPS_SLURM_WORKDIR:-}" ]]; then
    mkdir -p "$SHARPGAPS_SLURM_WORKDIR"; WORK=$(cd "$SHARPGAPS_SLURM_WORKDIR" && pwd -P)
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/sharpgaps-slurmtest.XXXXXX")
fi
STATE=""
RESULT=1
finish() {
    local rc=$?
    if [[ -n "$STATE" && -d "$STATE" ]]; then
        # keep the controller's evidence next to the run before the state dir goes
        cp "$STATE"/log/*.log "$WORK/" 2>/dev/null || true
        SHARPGAPS_SLURM_KEEP_STATE=${SHARPGAPS_SLURM_KEEP:-0} "$HERE/slurm_down.sh" "$STATE" || true
    fi
    if (( RESULT == 0 )) && [[ "${SHARPGAPS_SLURM_KEEP:-0}" != 1 ]]; then
        rm -rf -- "$WORK"
    else
        say "scratch dir kept: $WORK"
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

copy_workflow() {  # dest
    "$PY" - "$WF" "$1" <<'EOF'
import os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
SKIP_ANYWHERE = {".git", ".venv", ".snakemake", "__pycache__", ".pytest_cache",
                 ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache"}
def ignore(d, names):
    rel = os.path.relpath(d, src)
    out = {n for n in names if n in SKIP_ANYWHERE or n.endswith(".egg-info")}
    if rel == "." and "results" in names:
        out.add("results")           # outputs of earlier runs are not reused
    return out
shutil.copytree(src, dst, symlinks=True, ignore=ignore)
os.makedirs(os.path.join(dst, "results"), exist_ok=True)
# ../X from the copy means what ../X means from the workflow dir
parent, me = os.path.dirname(src), os.path.basename(src)
runs = os.path.dirname(dst)
for name in os.listdir(parent):
    link = os.path.join(runs, name)
    if name != me and not os.path.lexists(link):
        os.symlink(os.path.join(parent, name), link)
EOF
}

say "workflow $WF, config $CONFIG, targets: ${TARGETS[*]}"
say "scratch dir $WORK"
RUN_SLURM="$WORK/runs/run-slurm"
RUN_LOCAL="$WORK/runs/run-local"
copy_workflow "$RUN_SLURM"

# --------------------------------------------------------------------------- profile
mkdir -p "$WORK/profile"
"$PY" - "$BASE_PROFILE" "$TEST_PROFILE/config.yaml" "$WORK/profile/config.yaml" <<'EOF'
import sys, yaml
base_dir, test_file, out_file = sys.argv[1:]
base = {}
if base_dir != "none":
    with open(f"{base_dir}/config.yaml") as f:
        base = yaml.safe_load(f) or {}
with open(test_file) as f:
    test = yaml.safe_load(f) or {}
strip_res = set(test.pop("x-strip-resources", []) or [])
strip_opt = set(test.pop("x-strip-options", []) or [])
test = {k: v for k, v in test.items() if not str(k).startswith("x-")}
removed = []
for k in strip_opt & set(base):
    removed.append(k); del base[k]
def strip(res, where):
    if isinstance(res, dict):
        for k in list(res):
            if k in strip_res:
                removed.append(f"{where}{k}"); del res[k]
if isinstance(base.get("default-resources"), dict):
    strip(base["default-resources"], "default-resources.")
elif isinstance(base.get("default-resources"), list):
    keep = [e for e in base["default-resources"] if str(e).split("=")[0].strip() not in strip_res]
    removed += [f"default-resources.{e}" for e in base["default-resources"] if e not in keep]
    base["default-resources"] = keep
for rule, res in (base.get("set-resources") or {}).items():
    strip(res, f"set-resources.{rule}.")
def merge(a, b):
    for k, v in b.items():
        if v is None:
            a.pop(k, None)
        elif isinstance(v, dict) and isinstance(a.get(k), dict):
            merge(a[k], v)
        else:
            a[k] = v
    return a
eff = merge(base, test)
with open(out_file, "w") as f:
    f.write(f"# generated by run_slurm_test.sh from {base_dir} + {test_file}\n")
    if removed:
        f.write(f"# removed site-specific keys: {', '.join(removed)}\n")
    yaml.safe_dump(eff, f, sort_keys=False)
EOF
say "base profile: $BASE_PROFILE; test profile: $TEST_PROFILE; effective profile:"
sed 's/^/    /' "$WORK/profile/config.yaml" >&2

# --------------------------------------------------------------------------- SLURM up
say "starting SLURM"
STATE=$(timeout 900 "$HERE/slurm_up.sh") || fail "slurm_up.sh failed"
# shellcheck disable=SC1091
. "$STATE/env.sh"
CTLD_LOG=$SHARPGAPS_SLURM_CTLD_LOG

# --------------------------------------------------------------------------- SLURM run
# targets first: --configfile takes several values and would swallow them
cmd=("$SMK" "${TARGETS[@]}" --workflow-profile "$WORK/profile" "${EXTRA[@]}" --configfile "$CONFIG_IN_RUN")
say "in $RUN_SLURM: timeout $TIMEOUT ${cmd[*]}"
t0=$(date +%s.%N)
set +e
(cd "$RUN_SLURM" && timeout --kill-after=60 "$TIMEOUT" "${cmd[@]}") >"$WORK/slurm.snakemake.log" 2>&1
smk_rc=$?
set -e
t1=$(date +%s.%N)
SLURM_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
(( smk_rc == 0 )) || tail -n 40 "$WORK/slurm.snakemake.log" | sed 's/^/    | /' >&2
if (( smk_rc == 124 || smk_rc == 137 )); then
    fail "snakemake on SLURM timed out after ${TIMEOUT}s (log: $WORK/slurm.snakemake.log)"
elif (( smk_rc != 0 )); then
    fail "snakemake on SLURM exited $smk_rc (log: $WORK/slurm.snakemake.log)"
fi
say "snakemake on SLURM finished in ${SLURM_WALL}s"

# --------------------------------------------------------------------------- evidence
"$PY" - "$WORK/slurm.snakemake.log" "$CTLD_LOG" "$SHARPGAPS_SLURM_JOBCOMP_LOG" "$RUN_SLURM" <<'EOF' \
    || fail "SLURM evidence check failed (see above)"
import os, re, subprocess, sys
log_path, ctld_path, jobcomp_path, run_dir = sys.argv[1:]
log = open(log_path, errors="replace").read()
ctld = open(ctld_path, errors="replace").read()
jobcomp = open(jobcomp_path, errors="replace").read() if os.path.isfile(jobcomp_path) else ""
problems = []

# Jobs Snakemake ran: "rule NAME:" (remote) or "localrule NAME:" blocks with "jobid: N".
ran = {}
for m in re.finditer(r"^(local)?rule (\S+):\n(?:    .*\n)*?    jobid: (\d+)$", log, re.M):
    ran[int(m.group(3))] = (m.group(2), bool(m.group(1)))
remote = {j: r for j, (r, is_local) in ran.items() if not is_local}
local = sorted({r for r, is_local in ran.values() if is_local})
submitted = {}
for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.*?)\)\.", log):
    submitted[int(m.group(1))] = (m.group(2), m.group(3))
done = re.search(r"^(\d+) of (\d+) steps \(100%\) done$", log, re.M)

print(f"Snakemake ran {len(ran)} jobs: {len(remote)} remote, {len(ran) - len(remote)} "
      f"local (rules without action / localrules: {local}); submitted with sbatch: {len(submitted)}")
if done:
    print(f"  snakemake: {done.group(0)}")
else:
    problems.append("no '... steps (100%) done' line in the Snakemake log")
if not submitted:
    problems.append("Snakemake submitted no job to SLURM (nothing to do? old outputs?)")
for j, rule in sorted(remote.items()):
    if j not in submitted:
        problems.append(f"job {j} (rule {rule}) ran but was never submitted to SLURM")

complete_done = re.findall(r"_job_complete: JobId=(\d+) done", ctld)
print(f"slurmctld log: {len(complete_done)} '_job_complete: JobId=N done' lines "
      f"(>= {len(submitted)} jobs submitted by Snakemake)")
if len(complete_done) < len(submitted):
    problems.append(f"slurmctld completed {len(complete_done)} jobs < {len(submitted)} submitted")

for j, (sid, logfile) in sorted(submitted.items(), key=lambda kv: int(kv[1][0])):
    rule = remote.get(j, "?")
    print(f"  rule {rule}: snakemake job {j} -> SLURM job {sid}")
    m = re.search(rf"^.*_job_complete: JobId={sid} WEXITSTATUS (\d+)$", ctld, re.M)
    if not m:
        problems.append(f"slurmctld never completed SLURM job {sid} (rule {rule})")
    else:
        print(f"    slurmctld: {m.group(0).strip()}")
        if m.group(1) != "0":
            problems.append(f"SLURM job {sid} (rule {rule}) exited {m.group(1)}")
    # the controller still holds the finished job (MinJobAge): its allocation
    sj = subprocess.run(["scontrol", "show", "job", "-o", sid], capture_output=True, text=True)
    if sj.returncode == 0 and sj.stdout.strip():
        keep = [f for f in sj.stdout.split() if f.split("=")[0] in
                ("JobState", "ExitCode", "Partition", "TimeLimit", "NumCPUs", "AllocTRES")]
        print(f"    scontrol:  JobId={sid} {' '.join(keep)}")
    if jobcomp:
        c = re.search(rf"^JobId={sid} .*$", jobcomp, re.M)
        if not c or "JobState=COMPLETED" not in c.group(0):
            problems.append(f"job completion log has no COMPLETED record of SLURM job {sid}")
        else:
            keep = [f for f in c.group(0).split() if f.split("=")[0] in
                    ("JobId", "JobState", "StartTime", "EndTime", "NodeList")]
            print(f"    jobcomp:   {' '.join(keep)}")
    path = logfile if os.path.isabs(logfile) else os.path.join(run_dir, logfile)
    if not os.path.isfile(path):
        problems.append(f"SLURM log of job {sid} (rule {rule}) missing: {path}")
        continue
    ids = re.findall(rf"^.*SLURM_JOB_ID={sid}\b.*$", open(path, errors="replace").read(), re.M)
    if not ids:
        problems.append(f"SLURM log {path} shows no SLURM_JOB_ID={sid}")
    for line in ids:
        print(f"    job log:   {os.path.relpath(path, run_dir)}: {line.strip()}")

if problems:
    for p in problems:
        print(f"  PROBLEM: {p}")
    sys.exit(1)
print("SLURM evidence: OK")
EOF

# --------------------------------------------------------------------------- local run
LOCAL_WALL=""
if (( ${#COMPARE[@]} )); then
    copy_workflow "$RUN_LOCAL"
    lcmd=("$SMK" "${TARGETS[@]}" --workflow-profile "$LOCAL_PROFILE" "${EXTRA[@]}")
    # no profile given: Snakemake needs --cores
    [[ "$LOCAL_PROFILE" == none ]] && lcmd+=(--cores "$(nproc)")
    lcmd+=(--configfile "$CONFIG_IN_RUN")
    say "local run in $RUN_LOCAL: ${lcmd[*]}"
    t0=$(date +%s.%N)
    set +e
    (cd "$RUN_LOCAL" && env -u SLURM_CONF timeout --kill-after=60 "$TIMEOUT" "${lcmd[@]}") \
        >"$WORK/local.snakemake.log" 2>&1
    lrc=$?
    set -e
    t1=$(date +%s.%N)
    LOCAL_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    (( lrc == 0 )) || { tail -n 25 "$WORK/local.snakemake.log" >&2;
                        fail "local snakemake exited $lrc (log: $WORK/local.snakemake.log)"; }
    say "local run finished in ${LOCAL_WALL}s; comparing: ${COMPARE[*]}"
    "$PY" - "$RUN_SLURM" "$RUN_LOCAL" "${COMPARE[@]}" <<'EOF' || fail "SLURM and local outputs differ"
import glob, hashlib, os, sys
a, b, globs = sys.argv[1], sys.argv[2], sys.argv[3:]
def files(root, g):
    return {os.path.relpath(p, root) for p in glob.glob(os.path.join(root, g), recursive=True)
            if os.path.isfile(p)}
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
bad = 0
for g in globs:
    fa, fb = files(a, g), files(b, g)
    if not fa and not fb:
        print(f"  PROBLEM: glob {g!r} matches no file in either run"); bad += 1; continue
    for rel in sorted(fa ^ fb):
        print(f"  PROBLEM: {rel} exists only in the {'SLURM' if rel in fa else 'local'} run"); bad += 1
    for rel in sorted(fa & fb):
        ha, hb = sha(os.path.join(a, rel)), sha(os.path.join(b, rel))
        if ha == hb:
            print(f"  same  {ha[:16]}  {rel}")
        else:
            print(f"  DIFF  {ha[:16]} (slurm) != {hb[:16]} (local)  {rel}"); bad += 1
sys.exit(1 if bad else 0)
EOF
else
    say "no --compare globs given: local comparison skipped"
fi

RESULT=0
say "PASSED: ${#TARGETS[@]} target(s) built through SLURM in ${SLURM_WALL}s${LOCAL_WALL:+ (local run ${LOCAL_WALL}s, outputs identical)}"
