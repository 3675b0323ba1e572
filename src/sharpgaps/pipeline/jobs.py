"""One function per pipeline step, and what every job does around the library call: its threads and
device, loading a run's subset, model and specs, and publishing its outputs atomically.

The entry points (``sharpgaps.pipeline.cli``, the torchrun entry of ``sharpgaps.pipeline.distributed``) only parse
arguments and call these, so a step runs the same by hand, in tests and on a cluster.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from ..core.atomic import CorruptFileError, OutputWriteError, load_torch, read_frame, save_frame, save_json, write_error
from ..core.grid import run_info
from ..core.specs import FALLBACK, BranchSpec, EstimatorSpec, GeometrySpec, MechanismSpec, RestrictSpec, RunSpec, TheorySpec
from ..data import sources, subsets
from ..data.sources import DataError
from ..engine import losses, models, partitions
from ..engine.devices import disable_tf32, resolve_device
from ..engine.objective import Objective
from ..engine.training import (
    CKPT_DIR,
    CheckpointsInvalid,
    DivergenceError,
    checkpoint_path,
    train_run,
    verified_checkpoints,
    write_manifest,
)
from .config import ConfigError, read_yaml

# Start-up: every job is a fresh process, so each step below imports its own stage (geometry, estimators,
# restricted, theory, mechanism, summary) inside its function: importing all of them at the top cost every job
# 1.4 s more (python -X importtime -m sharpgaps: 5.5 s against 4.1 s, mostly scipy and the stage modules).

# Failures whose message names the file/key/run and the fix: shown as one line, without a traceback.
EXPECTED_ERRORS = (DataError, DivergenceError, CorruptFileError, OutputWriteError, ConfigError,
                   partitions.PartitionError)


def set_threads(n: int) -> None:
    """A job uses exactly the `threads` Snakemake gave it: torch's pool, and the BLAS/OpenMP pools numpy and
    scipy loaded (already initialised by now, so only threadpoolctl reaches them); the env var is for
    child processes."""
    torch.set_num_threads(n)
    threadpool_limits(limits=n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def job_device(name: str):
    """The config's `device` as a torch.device; one this machine lacks (or an unknown name) ends the job,
    naming the config key."""
    try:
        return resolve_device(name)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"config key 'device': {exc}") from None


@dataclass
class RunInputs:
    """What a per-run job builds from its run description: the spec, the subset and the seeded initial
    model (both on the job's device), and the loss."""

    run: dict
    spec: RunSpec
    subset: dict
    model: torch.nn.Module
    loss_fn: Callable

    @property
    def info(self) -> dict:
        return run_info(self.run)

    @property
    def k(self) -> int:
        """Classes: the Hessian eigenvectors spanning the dominant subspace."""
        return self.subset["meta"]["n_classes"]

    def objective(self, **options) -> Objective:
        """The run's objective on its subset; ``options``: its Hessian sample and chunking (Objective's fields)."""
        return Objective.from_subset(self.model, self.loss_fn, self.subset, **options)


def load_run(run: dict, subset_path, device) -> RunInputs:
    """The inputs of a per-run job from its run description (the workflow's run_description JSON)."""
    subset = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in subsets.load_subset(subset_path).items()}
    model = models.build_model(run["model"], subset["meta"], seed=run["seed"], **run.get("arch", {})).to(device)
    return RunInputs(run, RunSpec.from_run(run), subset, model, losses.get_loss(run["loss"]))


def run_record(job: RunInputs, device, threads: int, seconds: float, **extra) -> dict:
    """run.json: the run, its spec, and where and how long it trained; a Dirichlet partition's shards too (the
    draw taken, each worker's examples and label histogram)."""
    spec = job.spec
    shards = (partitions.describe(job.subset["y_train"], spec.K, spec.alpha, spec.seed, spec.b)
              if spec.partition == "dirichlet" else {})
    return {**job.info, **spec.as_dict(), **shards, "device": str(device), "threads": threads,
            "seconds": round(seconds, 2), "torch": torch.__version__, **extra}


def publish_run(work_dir, out_dir, ckpts: list[Path], record: dict) -> None:
    """Expose a finished run as its declared outputs: the checkpoint dir appears whole (rename) or not at
    all, then its manifest (rounds and sha256, which every reader checks), metrics.csv and rounds.csv, then
    run.json. Checkpoints are copied, never hard-linked: damage to a published file cannot reach the work copy
    a rerun publishes again. A full disk or an unwritable place raises one OutputWriteError naming ``out_dir``
    and leaves no half-published file."""
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    staging = None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{CKPT_DIR}.", dir=out_dir))
        for src in ckpts:
            shutil.copy2(src, staging / src.name)
        final = out_dir / CKPT_DIR
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        staging = None
        write_manifest(final)
        for name in ("metrics.csv", "rounds.csv"):
            shutil.copy2(work_dir / name, out_dir / f".{name}.tmp")
            os.replace(out_dir / f".{name}.tmp", out_dir / name)
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for name in ("metrics.csv", "rounds.csv"):
            (out_dir / f".{name}.tmp").unlink(missing_ok=True)
        raise write_error(exc, out_dir) from exc
    save_json(record, out_dir / "run.json")


def check_config(paths: list[str]) -> None:
    """Each config file parses as a YAML mapping, else ConfigError naming the file and line. `make all` runs it
    first: Snakemake reads --configfile files before the workflow starts, and its message names neither."""
    for path in paths:
        read_yaml(path)


def run_step(step: Callable[[], None]) -> int:
    """A job's exit code: 0, or 2 with one line on stderr for an expected failure."""
    try:
        step()
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- arguments of the entry points

def add_run_job_args(q, out_dir=False, ckpt_dir=False, name=None, resume=False) -> None:
    """The arguments every per-run job (train, geometry, restricted) takes from its rule."""
    q.add_argument("--run", required=True, help="JSON run description (from the workflow)")
    q.add_argument("--subset", required=True)
    if ckpt_dir:
        q.add_argument("--ckpt-dir", required=True)
    q.add_argument("--work-dir", required=True)
    if out_dir:
        q.add_argument("--out-dir", required=True)
    else:
        q.add_argument("--out", required=True, help="tidy table (.parquet or .csv)")
    if name is not None:
        q.add_argument("--name", default=name)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--device", default="cpu")
    if resume:
        q.add_argument("--resume-every-s", type=float, default=120.0)


def add_train_args(q) -> None:
    """`train`'s arguments: the same for `sharpgaps train` and the torchrun entry (sharpgaps.pipeline.distributed)."""
    add_run_job_args(q, out_dir=True, name="run", resume=True)


# ----------------------------------------------------------------------------- the steps

def acquire(dataset: str, data_dir, out, download: bool = True) -> None:
    """Verify (or download) one dataset's raw files; the stamp records each file and its checksum."""
    data_dir = sources.resolve_data_dir(data_dir)
    print(f"{dataset}: raw data from {data_dir}", flush=True)
    layout, files = sources.acquire(dataset, data_dir, download=download)
    save_json({"dataset": dataset, "data_dir": str(data_dir), "layout": layout.name,
               "files": {rel: {"path": str(p), "checksum": f"{f.algo}:{f.digest}"}
                         for f in layout.files for rel, p in files.items() if rel == f.relpath}}, out)


def subset(dataset: str, data_dir, out, **params) -> None:
    """The seeded stratified training subset, preprocessed (``params``: subsets.write_subset's)."""
    meta = subsets.write_subset(out, dataset=dataset, data_dir=sources.resolve_data_dir(data_dir), **params)
    print(f"{dataset}: {meta['n_train']} train / {meta['n_test']} test, input {meta['input_shape']}")


def train(run: dict, subset_path, work_dir, out_dir, *, name="run", threads=1, device="cpu",
          resume_every_s=120.0) -> None:
    """One Local SGD run (simulated workers), trained in ``work_dir`` and published to ``out_dir``."""
    set_threads(threads)
    device = job_device(device)
    job = load_run(run, subset_path, device)
    t0 = time.time()
    ckpts = train_run(job.objective(), job.spec, work_dir, run_name=name, run_info=job.info,
                      resume_every_s=resume_every_s)
    publish_run(work_dir, out_dir, ckpts, run_record(job, device, threads, time.time() - t0))


def run_checkpoints(run: dict, ckpt_dir, rounds=None) -> list[Path]:
    """The checkpoints of ``rounds`` (default: every one the run's spec implies), checked against the train step's
    manifest; a clear exit naming the missing or altered rounds and the fix otherwise."""
    try:
        return verified_checkpoints(ckpt_dir, RunSpec.from_run(run).checkpoints if rounds is None else rounds)
    except CheckpointsInvalid as exc:
        raise SystemExit(str(exc)) from None


def checkpoint_job(run: dict, subset_path, ckpt_dir, threads: int, device: str):
    """The start of a job over a run's checkpoints: thread caps, no TF32, the run's model and data, and its
    checkpoints (every one its spec implies, verified)."""
    ckpts = run_checkpoints(run, ckpt_dir)  # before any work: a damaged run fails in a second
    set_threads(threads)
    disable_tf32()
    return load_run(run, subset_path, job_device(device)), ckpts


def geometry(run: dict, params: dict, subset_path, ckpt_dir, work_dir, out, *, threads=1, device="cpu") -> None:
    """Hessian top-k and gap-subspace metrics of every checkpoint of a run (``params``: its `geometry`)."""
    from ..curvature.geometry import run_geometry  # start-up: this job's stage only
    job, ckpts = checkpoint_job(run, subset_path, ckpt_dir, threads, device)
    spec = GeometrySpec.from_config(params, job.k)
    save_frame(run_geometry(job.objective(**spec.objective_options()), spec, ckpts, Path(work_dir)), out)


def estimators(run: dict, geometry_params: dict, params: dict, subset_path, ckpt_dir, geometry_table, geometry_work,
               work_dir, out, *, threads=1, device="cpu") -> None:
    """Cheap estimators of the dominant subspace against the Hessian's at every (selected) checkpoint of a run
    (``params``: the `estimators` section; ``geometry_params``/``geometry_work``/``geometry_table``: the geometry
    job's, whose cached eigenvectors are reused and whose Lanczos HVP counts price the oracle)."""
    from ..curvature.geometry import checkpoint_cache  # start-up: this job's stage only
    from ..studies.estimators import run_estimators, selected  # start-up: this job's stage only
    job, ckpts = checkpoint_job(run, subset_path, ckpt_dir, threads, device)
    gspec, spec = GeometrySpec.from_config(geometry_params, job.k), EstimatorSpec.from_config(params)
    objective = job.objective(**gspec.objective_options())
    t0 = time.perf_counter()
    cache = checkpoint_cache(objective, gspec, ckpts, Path(geometry_work))
    print(f"eigenvectors and gradients of {len(cache)} checkpoints from {geometry_work}: "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    geometry = read_frame(geometry_table)  # the oracle's price: its Lanczos HVPs per checkpoint
    lanczos = {int(r): int(v) for r, v in geometry.loc[geometry["metric"] == "n_hvp", ["round", "value"]].to_numpy()}
    t0 = time.perf_counter()
    df = run_estimators(objective, spec, ckpts, {r: c["vectors"] for r, c in cache.items()}, job.spec, Path(work_dir),
                        k=job.k, oracle_hvps=lanczos, gradients={r: c["gradient"] for r, c in cache.items()})
    n = len(selected(ckpts, spec))
    print(f"estimators: {n} checkpoints in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    save_frame(df, out)


def mean_chi_k(tables: list[pd.DataFrame]) -> dict[int, float]:
    """round -> chi_k averaged over geometry tables (the seeds of one configuration), at the rounds all have."""
    per_table = [dict(t.loc[t["metric"] == "chi_k", ["round", "value"]].itertuples(index=False)) for t in tables]
    common = set.intersection(*(set(c) for c in per_table))
    return {int(r): float(np.mean([c[r] for c in per_table])) for r in sorted(common)}


def branch_point(run: dict, params: dict, ckpt_dir, geometry: list) -> tuple[int, str, float]:
    """(round, why, chi_k there) where a restricted run leaves its parent, by the config's branch rule
    (specs.BranchSpec) applied to the parent's checkpoints and the chi_k of ``geometry``: the parent's geometry
    table, or (branch_scope "setting") those of every seed of its configuration, averaged per round."""
    rounds = list(RunSpec.from_run(run).checkpoints)
    chi = mean_chi_k([read_frame(path) for path in geometry])
    chosen, why = BranchSpec.from_config(params).choose(rounds, run["local_steps"] // run["tau"], chi)
    run_checkpoints(run, ckpt_dir, [chosen])  # the one checkpoint a restricted run reads, before any work
    return chosen, why, float(chi.get(chosen, float("nan")))


def restricted(run: dict, params: dict, mode: str, subset_path, ckpt_dir, geometry, work_dir, out, *,
               name="restricted", threads=1, device="cpu", resume_every_s=120.0) -> None:
    """A restricted run in ``mode`` branched from one of the run's checkpoints (``params``: its `restricted`
    section; ``geometry``: the run's geometry table, for the branch rule)."""
    from ..studies.restricted import restricted_run  # start-up: this job's stage only
    set_threads(threads)
    disable_tf32()
    branch_round, why, chi = branch_point(run, params, ckpt_dir, geometry)
    print(f"[{name}:{mode}] branching at round {branch_round} (chi_k {chi:.3f} over {len(geometry)} geometry "
          f"table(s)): {why}", file=sys.stderr)
    job = load_run(run, subset_path, job_device(device))
    spec = RestrictSpec.from_config(params, mode, job.k)
    df = restricted_run(job.objective(hessian_examples=spec.hessian_examples), spec,
                        load_torch(checkpoint_path(ckpt_dir, branch_round)), job.spec, work_dir, name=f"{name}:{mode}",
                        resume_every_s=resume_every_s)
    for key in ("setting", "K", "tau", "b", "lr", "seed"):
        df[key] = run[key]
    df["branch_round"], df["branch_rule"], df["branch_chi_k"] = branch_round, why, chi
    df["branch_fallback"] = why.startswith(FALLBACK)
    save_frame(df, out)


def theory(params: dict, out, *, threads=1) -> None:
    """The quadratic-model check of the config's `theory` section."""
    from ..studies.theory import gap_covariance_table  # start-up: this job's stage only
    set_threads(threads)
    save_frame(gap_covariance_table(TheorySpec.from_config(params)), out)


def mechanism(run: dict, geometry_params: dict, params: dict, subset_path, ckpt_dir, geometry_table, geometry_work,
              work_dir, out, *, threads=1, device="cpu") -> None:
    """Per-direction gap variance against the noise x curvature prediction at every checkpoint of a run
    (``params``: the config's `mechanism` section). The eigenvectors come from the geometry job's cache in
    ``geometry_work`` (recomputed there, same numbers, if missing), their eigenvalues from its table."""
    from ..curvature.geometry import checkpoint_eigenvectors  # start-up: this job's stage only
    from ..studies.mechanism import run_mechanism  # start-up: this job's stage only
    job, ckpts = checkpoint_job(run, subset_path, ckpt_dir, threads, device)
    gspec = GeometrySpec.from_config(geometry_params, job.k)
    spec = MechanismSpec.from_config(params, job.k)
    objective = job.objective(**gspec.objective_options())
    vectors = checkpoint_eigenvectors(objective, gspec, ckpts, Path(geometry_work))
    table = read_frame(geometry_table)
    lam = table[table["metric"] == "lambda"].sort_values(["round", "i"])
    values = {int(r): g["value"].to_numpy(dtype=np.float64) for r, g in lam.groupby("round")}
    missing = sorted(set(vectors) - set(values))
    if missing:
        raise SystemExit(f"{geometry_table}: no eigenvalues at checkpoint rounds {missing}; rerun its geometry job")
    n = {r: min(len(values[r]), vectors[r].shape[1]) for r in vectors}
    df = run_mechanism(objective, spec, ckpts, {r: v[:, : n[r]] for r, v in vectors.items()},
                       {r: values[r][: n[r]] for r in vectors}, Path(work_dir))
    save_frame(df, out)


def collect_labelled(tables: dict[str, list], column: str, out) -> None:
    """Concatenate tidy tables, each labelled in ``column`` with the name it is listed under (a table listed
    under two names appears twice, once per label)."""
    frames = [read_frame(p).assign(**{column: name}) for name, paths in tables.items() for p in paths]
    save_frame(pd.concat(frames, ignore_index=True), out)


def collect(tables: list, out) -> None:
    save_frame(pd.concat([read_frame(p) for p in tables], ignore_index=True), out)


def heterogeneity(geometry, mechanism, out, estimators=None) -> None:
    """The heterogeneity family's cell table (sharpgaps.report.heterogeneity) from its experiment's tables."""
    from ..report.heterogeneity import cell_table  # start-up: this job's stage only

    save_frame(cell_table(read_frame(geometry), read_frame(mechanism),
                          read_frame(estimators) if estimators else None), out)


def summary(tables: dict[str, Path], out, title: str, splice_into=None, readme=None) -> None:
    """RESULTS.md from the pipeline's tables; also spliced, one heading level down, into ``splice_into``
    (e.g. docs/FIDELITY.md: measured numbers next to the claims, never typed by hand), and the headline
    block into ``readme``."""
    from ..report import summary as results  # start-up: this job's stage only

    text = results.write_results(tables, Path(out), title)
    if splice_into:
        results.splice(Path(splice_into), text.replace("# Results", "## Measured", 1).replace("\n## ", "\n### "))
    if readme:
        rel = os.path.relpath(Path(out), Path(readme).parent)
        results.splice(Path(readme), results.readme_block(tables, rel), results.README_BEGIN, results.README_END)
        results.splice(Path(readme), results.verdict_lines(tables, rel), results.VERDICTS_BEGIN, results.VERDICTS_END)
