"""One CLI entry point for every pipeline step, so a step runs the same by hand, in tests and on a cluster."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _threads(n: int) -> None:
    """A job uses exactly the `threads` Snakemake gave it: torch's pool, and the BLAS/OpenMP pools numpy and
    scipy loaded (already initialised by now, so only threadpoolctl reaches them); the env var is for
    child processes."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def cmd_acquire(a) -> None:
    from . import sources
    from .atomic import save_json

    data_dir = sources.resolve_data_dir(a.data_dir)
    layout, files = sources.acquire(a.dataset, data_dir, download=a.download)
    save_json({"dataset": a.dataset, "data_dir": str(data_dir), "layout": layout.name,
               "files": {rel: {"path": str(p), "checksum": f"{f.algo}:{f.digest}"}
                         for f in layout.files for rel, p in files.items() if rel == f.relpath}}, a.out)


def cmd_subset(a) -> None:
    from . import sources, subsets

    meta = subsets.write_subset(a.out, dataset=a.dataset, data_dir=sources.resolve_data_dir(a.data_dir),
                                n_train=a.n_train, seed=a.seed, test_cap=a.test_cap, max_len=a.max_len,
                                min_freq=a.min_freq)
    print(f"{a.dataset}: {meta['n_train']} train / {meta['n_test']} test, input {meta['input_shape']}")


def resolve_device(name: str):
    from .hessian import resolve_device as resolve

    try:
        return resolve(name)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"config key 'device': {exc}") from None


def _publish(work_dir: Path, out_dir: Path, ckpts: list[Path]) -> None:
    """Expose finished files as the declared outputs: the ckpt dir appears whole (rename) or not at all."""
    from .atomic import write_error

    staging = None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".ckpt.", dir=out_dir))
        for src in ckpts:
            try:
                os.link(src, staging / src.name)
            except OSError:
                shutil.copy2(src, staging / src.name)
        final = out_dir / "ckpt"
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        staging = None
        for name in ("metrics.csv", "rounds.csv"):
            shutil.copy2(work_dir / name, out_dir / f".{name}.tmp")
            os.replace(out_dir / f".{name}.tmp", out_dir / name)
    except OSError as exc:  # full disk / unwritable: one line naming the place, no half-published files
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for name in ("metrics.csv", "rounds.csv"):
            (out_dir / f".{name}.tmp").unlink(missing_ok=True)
        raise write_error(exc, out_dir) from exc


def cmd_train(a) -> None:
    import torch

    from . import losses, models, subsets
    from .atomic import save_json
    from .grid import run_info
    from .localsgd import RunSpec
    from .training import train_run

    _threads(a.threads)
    run = json.loads(a.run)
    device = resolve_device(a.device)
    spec = RunSpec.from_run(run)
    subset = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in subsets.load_subset(a.subset).items()}
    model = models.build_model(run["model"], subset["meta"], seed=run["seed"], **run.get("arch", {})).to(device)
    info = run_info(run)
    t0 = time.time()
    ckpts = train_run(model, losses.get_loss(run["loss"]), subset, spec, a.work_dir, run_name=a.name,
                      run_info=info, resume_every_s=a.resume_every_s)
    _publish(Path(a.work_dir), Path(a.out_dir), ckpts)
    save_json({**info, **spec.as_dict(), "device": str(device), "threads": a.threads,
               "seconds": round(time.time() - t0, 2), "torch": torch.__version__}, Path(a.out_dir) / "run.json")


def cmd_geometry(a) -> None:
    from . import losses, models, subsets
    from .atomic import save_frame
    from .geometry import GeometrySpec, run_geometry
    from .hessian import disable_tf32

    _threads(a.threads)
    disable_tf32()
    run, geo = json.loads(a.run), json.loads(a.geometry)
    device = resolve_device(a.device)
    subset = subsets.load_subset(a.subset)
    model = models.build_model(run["model"], subset["meta"], seed=run["seed"], **run.get("arch", {})).to(device)
    spec = GeometrySpec(k=subset["meta"]["n_classes"], **geo)
    ckpts = sorted(Path(a.ckpt_dir).glob("r*.pt"))
    if not ckpts:
        raise SystemExit(f"no checkpoints in {a.ckpt_dir}")
    df = run_geometry(ckpts, model, losses.get_loss(run["loss"]), subset["x_train"].to(device),
                      subset["y_train"].to(device), spec, Path(a.work_dir))
    save_frame(df, a.out)


def cmd_restricted(a) -> None:
    from . import losses, models, subsets
    from .atomic import load_torch, save_frame
    from .hessian import disable_tf32
    from .localsgd import RunSpec
    from .restricted import RestrictSpec, restricted_run

    _threads(a.threads)
    disable_tf32()
    run, r = json.loads(a.run), json.loads(a.restricted)
    device = resolve_device(a.device)
    subset = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in subsets.load_subset(a.subset).items()}
    model = models.build_model(run["model"], subset["meta"], seed=run["seed"], **run.get("arch", {})).to(device)
    spec = RunSpec.from_run(run)
    branch = load_torch(Path(a.ckpt_dir) / f"r{r['branch_round']:06d}.pt")
    rs = RestrictSpec(mode=a.mode, rounds=r["rounds"], refresh=r["refresh"], eval_every=r["eval_every"],
                      k=subset["meta"]["n_classes"], m=r.get("gap_m"), window=r["gap_window"], tol=r["tol"],
                      hessian_examples=r.get("hessian_examples"),
                      lanczos_dtype=r.get("lanczos_dtype", RestrictSpec.lanczos_dtype))
    df = restricted_run(model, losses.get_loss(run["loss"]), subset, branch, spec, rs, a.work_dir,
                        name=f"{a.name}:{a.mode}", resume_every_s=a.resume_every_s)
    for key in ("setting", "K", "tau", "b", "lr", "seed"):
        df[key] = run[key]
    df["branch_round"] = r["branch_round"]
    save_frame(df, a.out)


def cmd_summary(a) -> None:
    from .summary import write_results

    from .summary import splice

    tables = dict(item.split("=", 1) for item in a.table)
    text = write_results({k: Path(v) for k, v in tables.items()}, Path(a.out), a.title)
    if a.splice:  # e.g. docs/FIDELITY.md: measured numbers next to the claims, never typed by hand
        splice(Path(a.splice), text.replace("# Results", "## Measured", 1).replace("\n## ", "\n### "))


def cmd_manifest(a) -> None:
    """What produced the committed figures: config, commit, machine, wall time."""
    import hashlib
    import platform
    import subprocess

    import torch

    from .atomic import save_json

    cfg = Path(a.config).read_text()
    git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()  # noqa: E731
    max_rss = a.max_rss_mb
    if max_rss is None and a.benchmarks:  # the largest job's peak, from Snakemake's benchmark: files
        from .jobcosts import read_job_costs

        jobs = read_job_costs(a.benchmarks)
        max_rss = float(jobs.max_rss_mb.max()) if len(jobs) else None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    save_json({
        "config_file": a.config, "config_sha256": hashlib.sha256(cfg.encode()).hexdigest(), "config": cfg,
        # the commit the run started from; "dirty": tracked files other than the run's own outputs changed
        "commit": a.commit or git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!paper_figures")),
        "machine": f"{cpu}, {os.cpu_count()} cores", "python": platform.python_version(), "torch": torch.__version__,
        "wall_s": a.wall_s, "max_rss_mb": max_rss, "cores": a.cores, "note": a.note,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }, a.out)


def cmd_collect(a) -> None:
    import pandas as pd

    from .atomic import read_frame, save_frame

    save_frame(pd.concat([read_frame(p) for p in a.tables], ignore_index=True), a.out)


def cmd_theory(a) -> None:
    import numpy as np
    import pandas as pd

    from .atomic import save_frame
    from .theory import simulate_gap_covariance

    _threads(a.threads)
    t = json.loads(a.theory)
    H = np.diag(np.asarray(t["eigenvalues"], dtype=np.float64))
    d = len(H)
    A = np.random.default_rng(t["seed"]).standard_normal((d, d))
    C = A @ A.T / d + 0.1 * np.eye(d)  # a generic (non-diagonal in H's basis) noise covariance
    frames = []
    for tau in t["taus"]:
        r = simulate_gap_covariance(H, C, t["b"], t["lr"], tau, t["K"], rounds=t["rounds"], pool=t["pool"],
                                    seed=t["seed"] + tau)
        frames.append(pd.DataFrame({"tau": tau, "direction": np.arange(d), **r, "K": t["K"], "b": t["b"],
                                    "lr": t["lr"], "rounds": t["rounds"]}))
    save_frame(pd.concat(frames, ignore_index=True), a.out)


def _run_job_args(q, out_dir=False, ckpt_dir=False, name=None, resume=False) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sharpgaps", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("acquire", help="verify (or download) one dataset's raw files; write a stamp")
    q.add_argument("--dataset", required=True)
    q.add_argument("--data-dir", default=None)
    q.add_argument("--no-download", dest="download", action="store_false")
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_acquire)

    q = sub.add_parser("subset", help="draw the seeded stratified training subset and preprocess it")
    q.add_argument("--dataset", required=True)
    q.add_argument("--data-dir", default=None)
    q.add_argument("--n-train", type=int, default=5000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--test-cap", type=int, default=None)
    q.add_argument("--max-len", type=int, default=50)
    q.add_argument("--min-freq", type=int, default=1)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_subset)

    q = sub.add_parser("train", help="one Local SGD run (simulated workers) with checkpoints and resume")
    _run_job_args(q, out_dir=True, name="run", resume=True)
    q.set_defaults(func=cmd_train)
    q = sub.add_parser("geometry", help="Hessian top-k + gap-subspace metrics for every checkpoint of a run")
    q.add_argument("--geometry", required=True, help="JSON GeometrySpec fields")
    _run_job_args(q, ckpt_dir=True)
    q.set_defaults(func=cmd_geometry)

    q = sub.add_parser("theory", help="quadratic-model check: measured vs predicted gap covariance")
    q.add_argument("--theory", required=True, help="JSON of the config's `theory` section")
    q.add_argument("--out", required=True)
    q.add_argument("--threads", type=int, default=1)
    q.set_defaults(func=cmd_theory)

    q = sub.add_parser("restricted", help="Dom/Bulk or gap-restricted Local SGD branched from a checkpoint")
    q.add_argument("--restricted", required=True, help="JSON of the config's `restricted` section + branch_round")
    q.add_argument("--mode", required=True)
    _run_job_args(q, ckpt_dir=True, name="restricted", resume=True)
    q.set_defaults(func=cmd_restricted)

    q = sub.add_parser("summary", help="RESULTS.md from the pipeline's tables")
    q.add_argument("--table", action="append", default=[], help="NAME=PATH (experiment, restricted, theory)")
    q.add_argument("--title", default="")
    q.add_argument("--out", required=True)
    q.add_argument("--splice", default=None, help="also write the numbers into this document's generated block")
    q.set_defaults(func=cmd_summary)

    q = sub.add_parser("manifest", help="record config, commit, machine and wall time of a finished run")
    q.add_argument("--config", required=True)
    q.add_argument("--wall-s", type=float, required=True)
    q.add_argument("--max-rss-mb", type=float, default=None)
    q.add_argument("--benchmarks", default=None, help="results/benchmarks: take --max-rss-mb from its files")
    q.add_argument("--commit", default="", help="the commit the run started from (default: HEAD now)")
    q.add_argument("--cores", type=int, default=os.cpu_count())
    q.add_argument("--note", default="")
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_manifest)

    q = sub.add_parser("collect", help="concatenate tidy tables")
    q.add_argument("--out", required=True)
    q.add_argument("tables", nargs="+")
    q.set_defaults(func=cmd_collect)
    return p


def expected_errors() -> tuple[type[Exception], ...]:
    """Failures with a message that names the file/key/run and the fix: shown without a traceback."""
    from .atomic import CorruptFileError, OutputWriteError
    from .sources import DataError
    from .training import DivergenceError

    return DataError, DivergenceError, CorruptFileError, OutputWriteError


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except expected_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
