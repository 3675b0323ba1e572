"""One CLI entry point for every pipeline step, so a step runs the same by hand, in tests and on a cluster.

Argument parsing only: each step is a function of ``sharpgaps.pipeline.jobs`` (the manifest: ``sharpgaps.pipeline.manifest``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import jobs
from .costnote import note
from .manifest import write_manifest


def cmd_train(a) -> None:
    jobs.train(json.loads(a.run), a.subset, a.work_dir, a.out_dir, name=a.name, threads=a.threads, device=a.device,
               resume_every_s=a.resume_every_s)


def cmd_geometry(a) -> None:
    jobs.geometry(json.loads(a.run), json.loads(a.geometry), a.subset, a.ckpt_dir, a.work_dir, a.out,
                  threads=a.threads, device=a.device)


def cmd_restricted(a) -> None:
    jobs.restricted(json.loads(a.run), json.loads(a.restricted), a.mode, a.subset, a.ckpt_dir, a.geometry,
                    a.work_dir, a.out, name=a.name, threads=a.threads, device=a.device, resume_every_s=a.resume_every_s)


def cmd_estimators(a) -> None:
    jobs.estimators(json.loads(a.run), json.loads(a.geometry), json.loads(a.estimators), a.subset, a.ckpt_dir,
                    a.geometry_table, a.geometry_work, a.work_dir, a.out, threads=a.threads, device=a.device)


def _compare_scales(a) -> None:
    from ..report import scale_compare, summary  # start-up: this command only

    text = scale_compare.comparison_markdown(a.quick, a.paper, a.setting)
    if a.splice:
        summary.splice(Path(a.splice), text, scale_compare.BEGIN, scale_compare.END)
    print(text)


def cmd_manifest(a) -> None:
    write_manifest(a.config, a.out, wall_s=a.wall_s, max_rss_mb=a.max_rss_mb, benchmarks=a.benchmarks,
                   commit=a.commit, cores=a.cores, note=a.note, part=a.part, since=a.since)


def summary_tables(args: list[str], release: str | None = None) -> dict[str, Path | list[Path]]:
    """--table NAME=PATH arguments, after a release's tables (--release): a name given once maps to its path, one
    given more often to their list."""
    from ..report.summary import one_or_all, release_tables  # start-up: this command only

    tables: dict[str, list[Path]] = {}
    for name, paths in (release_tables(Path(release) / "tables") if release else {}).items():
        tables[name] = paths if isinstance(paths, list) else [paths]
    for arg in args:
        name, path = arg.split("=", 1)
        tables.setdefault(name, []).append(Path(path))
    return one_or_all(tables)


def after_geometry_args(q, section: str, table_use: str) -> None:
    """Arguments of a stage that follows a run's geometry job: its config section, the geometry section, table
    and cache (eigenvectors), and the common run-job arguments."""
    q.add_argument("--geometry", required=True, help="JSON of the setting's `geometry` section")
    q.add_argument(f"--{section}", required=True, help=f"JSON of the config's `{section}` section")
    q.add_argument("--geometry-table", required=True, help=f"the run's geometry table ({table_use})")
    q.add_argument("--geometry-work", required=True, help="the geometry job's work dir (cached eigenvectors)")
    jobs.add_run_job_args(q, ckpt_dir=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sharpgaps", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("acquire", help="verify (or download) one dataset's raw files; write a stamp")
    q.add_argument("--dataset", required=True)
    q.add_argument("--data-dir", default=None)
    q.add_argument("--no-download", dest="download", action="store_false")
    q.add_argument("--out", required=True)
    q.set_defaults(func=lambda a: jobs.acquire(a.dataset, a.data_dir, a.out, download=a.download))

    q = sub.add_parser("subset", help="draw the seeded stratified training subset and preprocess it")
    q.add_argument("--dataset", required=True)
    q.add_argument("--data-dir", default=None)
    q.add_argument("--n-train", type=int, default=5000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--test-cap", type=int, default=None)
    q.add_argument("--max-len", type=int, default=50)
    q.add_argument("--min-freq", type=int, default=1)
    q.add_argument("--out", required=True)
    q.set_defaults(func=lambda a: jobs.subset(a.dataset, a.data_dir, a.out, n_train=a.n_train, seed=a.seed,
                                              test_cap=a.test_cap, max_len=a.max_len, min_freq=a.min_freq))

    q = sub.add_parser("train", help="one Local SGD run (simulated workers) with checkpoints and resume")
    jobs.add_train_args(q)
    q.set_defaults(func=cmd_train)
    q = sub.add_parser("geometry", help="Hessian top-k + gap-subspace metrics for every checkpoint of a run")
    q.add_argument("--geometry", required=True, help="JSON of the setting's `geometry` section")
    jobs.add_run_job_args(q, ckpt_dir=True)
    q.set_defaults(func=cmd_geometry)

    q = sub.add_parser("theory", help="quadratic-model check: measured vs predicted gap covariance")
    q.add_argument("--theory", required=True, help="JSON of the config's `theory` section")
    q.add_argument("--out", required=True)
    q.add_argument("--threads", type=int, default=1)
    q.set_defaults(func=lambda a: jobs.theory(json.loads(a.theory), a.out, threads=a.threads))

    q = sub.add_parser("restricted", help="Dom/Bulk or gap-restricted Local SGD branched from a checkpoint")
    q.add_argument("--restricted", required=True, help="JSON of the config's `restricted` section")
    q.add_argument("--mode", required=True)
    q.add_argument("--geometry", required=True, nargs="+",
                   help="the parent run's geometry table, or every seed's (branch_scope setting): chi_k for the branch rule")
    jobs.add_run_job_args(q, ckpt_dir=True, name="restricted", resume=True)
    q.set_defaults(func=cmd_restricted)

    q = sub.add_parser("estimators", help="cheap estimators of the dominant subspace vs the Hessian")
    after_geometry_args(q, "estimators", "Lanczos HVPs: the oracle's cost")
    q.set_defaults(func=cmd_estimators)

    q = sub.add_parser("summary", help="RESULTS.md from the pipeline's tables")
    q.add_argument("--table", action="append", default=[],
                   help="NAME=PATH (experiment, restricted, theory, ...); a NAME given twice reads both tables' rows")
    q.add_argument("--title", default="")
    q.add_argument("--out", required=True)
    q.add_argument("--splice", default=None, help="also write the numbers into this document's generated block")
    q.add_argument("--readme", default=None, help="also write the headline numbers into this README's block")
    q.add_argument("--release", default=None,
                   help="a release's figures.dir: read the tables its parts copied to <release>/tables/<part>/")
    q.set_defaults(func=lambda a: jobs.summary(summary_tables(a.table, a.release), a.out, a.title,
                                               splice_into=a.splice, readme=a.readme))

    q = sub.add_parser("compare-scales", help="one setting's headline numbers, quick release against paper scale")
    q.add_argument("--quick", required=True, help="the quick release's figures.dir (its tables/<part>/)")
    q.add_argument("--paper", required=True, help="the paper scale's figures.dir (its tables/<part>/)")
    q.add_argument("--setting", default="mnist_fc")
    q.add_argument("--splice", default=None, help="write the table into this document's scale-compare block")
    q.set_defaults(func=_compare_scales)

    q = sub.add_parser("manifest", help="record config, commit, machine and wall time of a finished run")
    q.add_argument("--config", required=True)
    q.add_argument("--wall-s", type=float, required=True)
    q.add_argument("--max-rss-mb", type=float, default=None)
    q.add_argument("--benchmarks", default=None, help="results/benchmarks: take --max-rss-mb from its files")
    q.add_argument("--commit", default="", help="the commit the run started from (default: HEAD now)")
    q.add_argument("--cores", type=int, default=os.cpu_count())
    q.add_argument("--note", default="")
    q.add_argument("--part", default=None, help="a release part (config `parts`): update only its entry of --out")
    q.add_argument("--since", type=float, default=None,
                   help="with --part: the part's start (epoch s); it lists the figure files written since")
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_manifest)

    q = sub.add_parser("check-config", help="check that config files are valid YAML; name the file and line if not")
    q.add_argument("configs", nargs="+")
    q.set_defaults(func=lambda a: jobs.check_config(a.configs))
    q = sub.add_parser("cost-note", help="print what the paper-scale DAG costs on this machine if it has no GPU")
    q.add_argument("config")
    q.add_argument("--stop", action="store_true",
                   help="where the note applies, stop there (exit 3) naming the quick scale and CONFIRM=1")
    q.set_defaults(func=lambda a: _cost_note(a.config, a.stop))
    q = sub.add_parser("mechanism", help="per-direction gap variance vs the noise x curvature prediction, per checkpoint")
    after_geometry_args(q, "mechanism", "eigenvalues")
    q.set_defaults(func=lambda a: jobs.mechanism(json.loads(a.run), json.loads(a.geometry), json.loads(a.mechanism),
                                                 a.subset, a.ckpt_dir, a.geometry_table, a.geometry_work, a.work_dir,
                                                 a.out, threads=a.threads, device=a.device))

    q = sub.add_parser("heterogeneity", help="the heterogeneity family's cells from its geometry, mechanism and "
                                             "estimator tables")
    q.add_argument("--geometry", required=True, help="the heterogeneity experiment's geometry table")
    q.add_argument("--mechanism", required=True, help="the mechanism table (its heterogeneity rows are read)")
    q.add_argument("--estimators", default=None, help="the heterogeneity experiment's estimator table")
    q.add_argument("--out", required=True)
    q.set_defaults(func=lambda a: jobs.heterogeneity(a.geometry, a.mechanism, a.out, a.estimators))

    q = sub.add_parser("collect-labelled", help="concatenate tidy tables, labelling each with its group's name")
    q.add_argument("--column", required=True, help="the label column, e.g. experiment")
    q.add_argument("--out", required=True)
    q.add_argument("tables", nargs="+", help="NAME=PATH")
    q.set_defaults(func=lambda a: jobs.collect_labelled(
        {name: [p for n, p in (t.split("=", 1) for t in a.tables) if n == name]
         for name in dict.fromkeys(t.split("=", 1)[0] for t in a.tables)}, a.column, a.out))

    q = sub.add_parser("collect", help="concatenate tidy tables")
    q.add_argument("--out", required=True)
    q.add_argument("tables", nargs="+")
    q.set_defaults(func=lambda a: jobs.collect(a.tables, a.out))
    return p


def _cost_note(config: str, stop: bool) -> None:
    text = note(Path(config), Path.cwd(), stop=stop)
    if text:
        print(text, file=sys.stderr)
        if stop:
            raise SystemExit(3)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return jobs.run_step(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
