"""`make gpu-check`: a short check to run whenever a GPU is at hand (README, "Checking a GPU").

1. Unit costs at the paper's sizes, per model, timed on the device (benchmarks/unit_costs.py): one local step of
   K=8 workers at b=50, a full-batch gradient, the Hessian's graph build, an HVP and a Lanczos step, the
   measurements that replace bench_scale.py's FLOP-count estimate of the paper scale on a GPU.
2. The smoke DAG's tables (.test/config.yaml, every table of `all`, no figures) with `device: <device>`, compared
   with a CPU run of the same config (table_diff.py): bitwise when both run on the CPU (the project's
   determinism guarantee), within table_diff's stated tolerances on a GPU.
It writes a JSON record and a Markdown summary (``--out X.json``, ``X.md`` beside it) and exits 1 when a table
fails the comparison. Bad input (an unknown device, CUDA that is not there, a reference without the smoke
tables) stops it before any work.

    python benchmarks/gpu_check.py --device cuda --out docs/gpu_check/cuda.json
    python benchmarks/gpu_check.py --device cpu --out /tmp/cpu.json --reference <finished CPU smoke run> --examples 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, when run as a script
from table_diff import compare_dirs, tolerance_record  # noqa: E402
from unit_costs import bench_scale_units, paper_config, unit_costs  # noqa: E402

from sharpgaps.core.atomic import save_json, save_text  # noqa: E402
from sharpgaps.data.sources import ENV_DATA_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / ".test/config.yaml"
RESULTS = "results/gpu-check"  # under the Snakemake working directory: <device>/ and reference/, one results_dir each
DEVICES = ("cuda", "cpu")
# Examples of the gradient/HVP/Lanczos timings: the paper's Hessian sample on a GPU; on the CPU a few, since this
# CPU run checks the check (make bench measures the CPU's unit costs) and a transformer HVP on 5,000 takes ~20 s.
CPU_EXAMPLES = 64
BUDGET_S = 8 * 60  # the whole check on one GPU


def fail(message: str) -> SystemExit:
    return SystemExit(f"gpu-check: {message}")


def check_device(name: str) -> torch.device:
    """The device to check; stops, naming DEVICE and the fix, when this machine cannot run it."""
    if name not in DEVICES:
        raise fail(f"DEVICE={name!r} is not a device it checks (allowed: {' | '.join(DEVICES)}). "
                   "Use `make gpu-check` on a machine with a GPU, or `make gpu-check DEVICE=cpu` to check the check.")
    if name == "cuda" and not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
        raise fail(f"DEVICE=cuda, but {why}. Run it on a machine with a GPU, in a venv made by `make lock ACCEL=cuda "
                   "&& make setup ACCEL=cuda`; or check the check here with `make gpu-check DEVICE=cpu`.")
    return torch.device(name)


def reference_tables(path: Path) -> Path:
    """The tables/ of a finished CPU smoke run: a results_dir, or a working directory holding results/."""
    for tables in (path / "tables", path / "results" / "tables"):
        if tables.is_dir():
            return tables
    raise fail(f"REFERENCE={path}: neither {path}/tables nor {path}/results/tables exists. Give a finished CPU smoke "
               "run (.test/config.yaml) of this commit, e.g. a checkout after `make all SCALE=smoke`, or leave "
               "REFERENCE unset and the check runs one.")


def _env(config: Path) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # the config's data_dir is relative to the checkout, not to another working directory
    data_dir = yaml.safe_load(config.read_text())["data_dir"]
    env.setdefault(ENV_DATA_DIR, str((REPO / data_dir).resolve()))
    return env


def snakemake(workdir: Path, results_dir: str, device: str, cores: int, *args: str, log: Path | None = None,
              config: Path = SMOKE_CONFIG) -> str:
    """Snakemake on ``config`` (the smoke config) with ``device`` and its own results_dir (and figure directory under
    it)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args,
           "--cores", str(cores), f"--configfile={config}", "--config", f"device={device}",
           f"results_dir={results_dir}", "figures=" + json.dumps({"dir": f"{results_dir}/figures"})]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(config))
    text = proc.stdout + proc.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
    if proc.returncode != 0:
        raise fail(f"snakemake ({device}, {results_dir}) failed{f'; its output is in {log}' if log else ''}:\n"
                   f"{text[-3000:]}")
    return text


def table_names(workdir: Path, results_dir: str, device: str, cores: int, config: Path = SMOKE_CONFIG) -> list[str]:
    """The file names of every table the smoke DAG's `all` makes (Snakemake's --summary: no job runs)."""
    prefix = f"{results_dir}/tables/"
    paths = [line.split("\t")[0] for line in snakemake(workdir, results_dir, device, cores, "all", "--summary",
                                                        config=config).splitlines()]
    names = sorted(p[len(prefix):] for p in paths if p.startswith(prefix) and p.endswith(".parquet"))
    if not names:
        raise fail(f"the smoke DAG names no table under {prefix}")
    return names


def run_tables(workdir: Path, results_dir: str, device: str, cores: int, names: list[str],
               config: Path = SMOKE_CONFIG) -> float:
    """The smoke DAG up to its tables (no figures); its wall seconds."""
    t0 = time.monotonic()
    snakemake(workdir, results_dir, device, cores, *(f"{results_dir}/tables/{n}" for n in names),
              log=workdir / f"{results_dir}.log", config=config)
    return time.monotonic() - t0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "cpu")


def shown(path: str) -> str:
    """A path as a committed record may name it: relative to the checkout (no machine's absolute paths)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else f"{p.name} (outside the checkout)"


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return proc.stdout.strip() or "unknown"


# ----------------------------------------------------------------------------- the summary

def _g(x: float) -> str:
    return "0" if x == 0 else f"{x:.2g}"


def markdown(r: dict) -> str:
    """The short summary committed beside the record."""
    tables = r["tables"]
    columns = [c for t in tables for c in t["columns"]]
    failing = [t for t in tables if not t["passed"]]
    verdict = "PASS" if r["passed"] else "FAIL"
    w = r["wall_s"]
    reference = f"CPU reference DAG {w['reference_dag']:.0f} s" if r["reference_ran"] else "CPU reference given"
    lines = [f"# GPU check on {r['device_name']} ({r['device']})", "",
             f"**{verdict}**: the smoke DAG's {len(tables)} tables on `{r['device']}` against a CPU run of the same "
             f"config, {len(columns)} compared columns; {len(failing)} table(s) failing.", "",
             f"- torch {r['torch']}" + (f", CUDA {r['cuda']}, cuDNN {r['cudnn']}" if r["device"] == "cuda" else "")
             + f"; host {r['host']}; commit {r['commit']}; {r['date']}",
             f"- reference: {r['reference']}; config {r['config']}",
             f"- wall time: unit costs {w['units']:.0f} s, {reference}, {r['device']} DAG {w['device_dag']:.0f} s; "
             f"total {w['total']:.0f} s (budget on one GPU: "
             f"{BUDGET_S // 60} min)", "", "## Tolerances", "",
             "An entry b passes when |b - a| <= atol + rtol |a| (a: the CPU reference).", "",
             "| tolerance | rtol | atol | why |", "|---|---:|---:|---|"]
    for name, t in r["tolerances"]["in_force"].items():
        lines.append(f"| {name} | {_g(t['rtol'])} | {_g(t['atol'])} | {t['reason']} |")
    ex = r["tolerances"]["excluded"]
    lines += ["", f"Solver-path quantities: {', '.join(r['tolerances']['solver_path_quantities'])}. Not compared: "
              f"columns {', '.join(ex['columns'])}; metrics {', '.join(ex['metrics'])} ({ex['reason']}).", "",
              "## Tables", "",
              "| table | rows | compared columns | max abs dev | max rel dev | failing columns | verdict |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for t in tables:
        cols = t["columns"]
        lines.append(f"| {t['table']} | {t['rows']} | {len(cols)} | {_g(max((c['max_abs'] for c in cols), default=0))} "
                     f"| {_g(max((c['max_rel'] for c in cols), default=0))} | {sum(not c['passed'] for c in cols)} | "
                     f"{'pass' if t['passed'] else 'FAIL: ' + (t['problem'] or 'out of tolerance')} |")
    moved = [(t["table"], c) for t in tables for c in t["columns"] if c["max_abs"] > 0 or not c["passed"]]
    lines += ["", f"Columns that moved ({len(moved)} of {len(columns)}; the rest are equal bit for bit; the JSON "
              "record beside this summary has every column):", ""]
    if moved:
        lines += ["| table | column | n | max abs | max rel | rtol | atol | failing | largest at | verdict |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
        lines += [f"| {t} | {c['column']} | {c['n']} | {_g(c['max_abs'])} | {_g(c['max_rel'])} | {_g(c['rtol'])} | "
                  f"{_g(c['atol'])} | {c['failing']} | {c['worst']} | {'pass' if c['passed'] else 'FAIL'} |"
                  for t, c in moved]
    else:
        lines.append("none.")
    u = r["units"]
    lines += ["", f"## Unit costs at the paper's sizes ({r['device']})", "",
              f"Medians of {u['repeats']} interleaved repeats, {u['threads']} torch thread(s). A step: all K workers; "
              f"gradient, graph build, HVP and Lanczos step on {u['examples']} examples (the paper's Hessian sample: "
              "5,000; bench_scale.py scales per-example costs linearly); the Lanczos step includes the HVP, the "
              "vector's trips to the host and ARPACK's own step (timed alone: ARPACK step).", "",
              "| model | d | step (K, b) ms | gradient ms | graph build ms | HVP ms | Lanczos step ms (k) "
              "| ARPACK step ms | peak device MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in u["models"]:
        peak = "-" if m["peak_device_mb"] is None else f"{m['peak_device_mb']:,.0f}"
        lines.append(f"| {m['model']} | {m['d']:,} | {m['step_s'] * 1e3:.3g} ({m['K']}, {m['b']}) | "
                     f"{m['gradient_s'] * 1e3:.3g} | {m['build_s'] * 1e3:.3g} | {m['hvp_s'] * 1e3:.3g} | "
                     f"{m['lanczos_step_s'] * 1e3:.3g} ({m['lanczos_k']}) | {m['arpack_step_s'] * 1e3:.3g} | {peak} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the check

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (both runs on the CPU: checks the check)")
    ap.add_argument("--out", required=True, help="the JSON record; the Markdown summary goes beside it (.md)")
    ap.add_argument("--reference", help="a finished CPU smoke run (its results_dir or working directory): "
                    "compared with instead of running the CPU reference")
    ap.add_argument("--examples", type=int, help=f"examples of the gradient/HVP/Lanczos timings (default: the "
                    f"paper's Hessian sample on cuda, {CPU_EXAMPLES} on cpu)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats per unit timing")
    ap.add_argument("--steps", type=int, default=3, help="local steps per timing of a training step")
    ap.add_argument("--config", default=str(SMOKE_CONFIG),
                    help="the config whose tables are compared (default: the smoke config, .test/config.yaml)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Snakemake's --cores")
    ap.add_argument("--threads", type=int, help="torch threads of the unit timings (default: config.yaml's threads)")
    ap.add_argument("--workdir", default=str(REPO), help=f"Snakemake's working directory (runs go to {RESULTS}/)")
    a = ap.parse_args(argv)
    t_start = time.monotonic()

    # bad input stops here, before any work
    device = check_device(a.device)
    for name, value in (("EXAMPLES", a.examples), ("--repeats", a.repeats), ("--steps", a.steps)):
        if value is not None and value < 1:
            raise fail(f"{name}={value}: give at least 1")
    out, workdir = Path(a.out), Path(a.workdir).resolve()
    ref_tables = reference_tables(Path(a.reference).resolve()) if a.reference else None
    run_dir = f"{RESULTS}/{a.device}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = Path(a.config).resolve()
    names = table_names(workdir, run_dir, a.device, a.cores, config)
    if ref_tables is not None:
        missing = [n for n in names if not (ref_tables / n).is_file()]
        if missing:
            raise fail(f"REFERENCE={a.reference}: {ref_tables} lacks {', '.join(missing)}; give a finished CPU smoke "
                       "run (.test/config.yaml) of this commit, or leave REFERENCE unset and the check runs one.")
    out.parent.mkdir(parents=True, exist_ok=True)

    cfg = paper_config()
    examples = a.examples or (CPU_EXAMPLES if device.type == "cpu" else cfg["subset"]["n_train"])
    threads = a.threads or cfg["threads"]
    torch.set_num_threads(threads)
    print(f"gpu-check on {device_name(device)} ({device}): unit costs at the paper's sizes, {examples} examples",
          flush=True)
    t0 = time.monotonic()
    models = unit_costs(device, examples, repeats=a.repeats, steps=a.steps,
                        log=lambda line: print(f"  {line}", flush=True))
    units_s = time.monotonic() - t0

    reference_s = 0.0
    if ref_tables is None:
        print("the CPU reference: the smoke DAG's tables", flush=True)
        reference_s = run_tables(workdir, f"{RESULTS}/reference", "cpu", a.cores, names, config)
        ref_tables = workdir / RESULTS / "reference" / "tables"
    print(f"the smoke DAG's tables on {device}", flush=True)
    shutil.rmtree(workdir / run_dir, ignore_errors=True)  # the run under test starts from nothing
    device_s = run_tables(workdir, run_dir, a.device, a.cores, names, config)
    tables = compare_dirs(ref_tables, workdir / run_dir / "tables", names, same_device=device.type == "cpu")

    record = {
        "device": a.device, "device_name": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "host": f"{device_name(torch.device('cpu'))}, {os.cpu_count()} cores", "commit": _commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "config": shown(str(config)),
        "reference": shown(a.reference) if a.reference else f"ran here ({RESULTS}/reference)",
        "reference_ran": a.reference is None,
        "passed": all(t["passed"] for t in tables), "tolerances": tolerance_record(device.type == "cpu"),
        "tables": tables,
        "units": {"examples": examples, "repeats": a.repeats, "steps": a.steps, "threads": threads, "models": models,
                  "bench_scale_unit": bench_scale_units(models)},
        "wall_s": {"units": units_s, "reference_dag": reference_s, "device_dag": device_s,
                   "total": time.monotonic() - t_start},
    }
    save_json(record, out)
    text = markdown(record)
    save_text(text, out.with_suffix(".md"))
    print(text)
    print(f"written: {out}, {out.with_suffix('.md')}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
