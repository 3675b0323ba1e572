"""sharpgaps.engine.objective.FullBatchHVP (hand-written) against curvlinops' HessianLinearOperator, side by side.

    python benchmarks/bench_curvlinops.py [--sizes quick paper] [--repeats 5] [--eigsh quick] [--json out.json]

curvlinops-for-pytorch (3.x) is not a project dependency: install it beside torch without touching the
lock, e.g. `pip install --no-deps --target DIR curvlinops-for-pytorch==3.0.1 backpack-for-pytorch einops
einconv linear_operator opt-einsum` and put DIR on PYTHONPATH.

For each model of the paper (FC-tanh on MNIST, CNN-ReLU on CIFAR-10, the transformer on SST-2; weights at
their seed-0 initialisation, real 5k subsets) and each Hessian size (quick: the examples config.quick.yaml
gives the geometry; paper: the whole 5k subset, config.yaml):
  - HVP seconds: median (min-max) of interleaved repeats in this process (ours, theirs, ours, ...), after a
    warm-up product each; ours with the cached create_graph graph, as the pipeline runs it;
  - peak RSS: each operator built in a fresh process that loads the same model and data, does 3 HVPs and
    reports its ru_maxrss, and the growth over its RSS before the operator existed;
  - eigsh: both operators behind the same top_eigenpairs (ARPACK 'LA', the pipeline's float32 working
    precision, the same seeded start vector, tol 1e-3, k = k + extra of the quick config), its seconds and
    HVP count, and the largest relative difference between the two sets of eigenvalues.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sharpgaps.curvature.hessian import top_eigenpairs
from sharpgaps.engine import losses, models  # noqa: E402
from sharpgaps.engine.objective import FullBatchHVP  # noqa: E402

# setting: (dataset, model, quick Hessian examples (config.quick.yaml), k + extra (quick), subset kwargs per size)
CASES = {
    "mnist_fc": ("mnist", "fc_tanh", 5000, 10 + 2, {}),
    "cifar_cnn": ("cifar10", "cnn_relu", 256, 10 + 2, {}),
    "sst2_transformer": ("sst2", "transformer", 128, 2 + 2,
                         {"quick": {"max_len": 32, "min_freq": 1}, "paper": {"max_len": 50, "min_freq": 1}}),
}
PAPER_EXAMPLES = 5000
TRANSPORT: Path | None = None  # --transport


def rss_mb() -> float:
    """Peak RSS (VmHWM) of this process since the last reset_peak(), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start the peak RSS afresh (Linux: 5 > /proc/self/clear_refs), so loading the data and the imports do
    not set the peak that the operator is measured by."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class MeanLoss(torch.nn.Module):
    """The pipeline's loss (a mean over the batch) as the nn.Module curvlinops asks for."""

    reduction = "mean"

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, logits, y):
        return self.fn(logits, y)


def problem(setting: str, size: str, data_dir: Path, cache: Path):
    dataset, model_name, quick_n, _, kws = CASES[setting]
    n = quick_n if size == "quick" else PAPER_EXAMPLES
    kw = kws.get(size, {})
    path = cache / f"{dataset}_5000_{'_'.join(f'{k}{v}' for k, v in kw.items())}.pt"
    if TRANSPORT:  # subsets packed elsewhere (x in float16 for transport; the sst2 one at max_len 32)
        subset = torch.load(TRANSPORT / f"{dataset}.pt", weights_only=False)
        if subset["x_train"].is_floating_point():
            subset["x_train"] = subset["x_train"].float()
    elif path.exists():
        subset = torch.load(path, weights_only=False)
    else:
        from sharpgaps.data import subsets

        subset = subsets.make_subset(dataset, data_dir, n_train=5000, seed=0, test_cap=10, **kw)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(subset, path)
    model = models.build_model(model_name, subset["meta"], seed=0)
    x, y = subset["x_train"][:n], subset["y_train"][:n]
    return model, losses.mse_onehot, x, y


def operators(model, loss_fn, x, y):
    """(ours, theirs): each a callable flat (d,) float32 -> flat (d,), with .dim."""
    from curvlinops import HessianLinearOperator

    ours = FullBatchHVP(model, loss_fn, x, y)
    ours.gradient()  # builds the cached graph, as geometry does before the eigensolve
    params = [p for p in model.parameters() if p.requires_grad]
    H = HessianLinearOperator(model, MeanLoss(loss_fn), params, [(x, y)], check_deterministic=False)

    def theirs(v):
        return H @ v

    theirs.dim = ours.dim
    theirs.dtype = torch.float32
    theirs.device = torch.device("cpu")
    return ours, theirs


def memory_probe(impl: str, setting: str, size: str, data_dir: Path, cache: Path) -> dict:
    """Run in a fresh process: peak RSS of building one operator and doing 3 HVPs."""
    model, loss_fn, x, y = problem(setting, size, data_dir, cache)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    import curvlinops  # noqa: F401  (both processes pay the import)

    reset_peak()
    before = rss_mb()
    if impl == "ours":
        op = FullBatchHVP(model, loss_fn, x, y)
        op.gradient()
        f = op
    else:
        from curvlinops import HessianLinearOperator

        H = HessianLinearOperator(model, MeanLoss(loss_fn), list(model.parameters()), [(x, y)],
                                  check_deterministic=False)
        f = H.__matmul__
    for _ in range(3):
        f(v)
    return {"peak_rss_mb": rss_mb(), "growth_mb": rss_mb() - before}


def fresh_memory(impl: str, setting: str, size: str, args) -> dict:
    cmd = [sys.executable, __file__, "--memory-probe", impl, setting, size, "--threads", str(args.threads),
           *(["--transport", str(args.transport)] if args.transport else []), "--data-dir", str(args.data_dir),
           "--cache", str(args.cache)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])


def hvp_times(ours, theirs, repeats: int) -> dict:
    v = torch.randn(ours.dim, generator=torch.Generator().manual_seed(1))
    a, b = ours(v), theirs(v)  # warm-up, and the products must agree
    agree = float((a - b).norm() / a.norm())
    ts = {"ours": [], "curvlinops": []}
    for _ in range(repeats):
        for name, f in (("ours", ours), ("curvlinops", theirs)):
            t = time.perf_counter()
            f(v)
            ts[name].append(time.perf_counter() - t)
    return {name: (statistics.median(t), min(t), max(t)) for name, t in ts.items()} | {"hvp_rel_diff": agree}


def eigsh_pair(ours, theirs, k: int) -> dict:
    out = {}
    for name, f in (("ours", ours), ("curvlinops", theirs)):
        e = top_eigenpairs(f, k=k, tol=1e-3, dtype="float32", compute_residuals=False, seed=0)
        out[name] = (e.seconds, e.n_hvp, e.values)
    va, vb = out["ours"][2], out["curvlinops"][2]
    rel = float(max(abs(a - b) / abs(a) for a, b in zip(va, vb)))
    return {"eigsh_s": {n: out[n][0] for n in out}, "n_hvp": {n: out[n][1] for n in out},
            "eig_rel_diff": rel, "lambda_1": float(va[0]), "k": k}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["quick", "paper"], choices=["quick", "paper"])
    p.add_argument("--eigsh", nargs="*", default=["quick"], choices=["quick", "paper"],
                   help="sizes at which to run both eigensolves (paper sizes take long on 2 cores)")
    p.add_argument("--settings", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("SHARPGAPS_DATA_DIR", REPO.parent / "shared/data")))
    p.add_argument("--cache", type=Path, default=Path("/tmp/sharpgaps-bench-subsets"))
    p.add_argument("--json", type=Path)
    p.add_argument("--transport", type=Path, help="read the subsets packed as DIR/<dataset>.pt instead")
    p.add_argument("--rows", type=Path, help="append each finished row here as it comes (JSON lines)")
    p.add_argument("--memory-probe", nargs=3, metavar=("IMPL", "SETTING", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global TRANSPORT
    TRANSPORT = args.transport
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        impl, setting, size = args.memory_probe
        print(json.dumps(memory_probe(impl, setting, size, args.data_dir, args.cache)))
        return 0
    import importlib.metadata

    import curvlinops  # noqa: F401  (fail early: the docstring says how to install it)

    measured = (f"measured {time.strftime('%Y-%m-%d %H:%M %Z')}, {args.threads} thread(s), load average "
                f"{os.getloadavg()[0]:.1f} at start, curvlinops-for-pytorch "
                f"{importlib.metadata.version('curvlinops-for-pytorch')}, torch {torch.__version__}")
    rows = []
    for size in args.sizes:  # every quick case first: the cheap ones come back even if time runs out
        for setting in args.settings:
            model, loss_fn, x, y = problem(setting, size, args.data_dir, args.cache)
            n = len(x)
            ours, theirs = operators(model, loss_fn, x, y)
            row = {"setting": setting, "size": size, "n": n, "d": ours.dim, "threads": args.threads}
            row |= hvp_times(ours, theirs, args.repeats)
            if size in args.eigsh:
                row |= eigsh_pair(ours, theirs, CASES[setting][3])
            del ours, theirs
            mem = {}
            for impl in ("ours", "curvlinops"):  # fresh processes, one after the other
                mem[impl] = fresh_memory(impl, setting, size, args)
            row["memory"] = mem
            rows.append(row)
            print(json.dumps(row, default=float), flush=True)
            if args.rows:
                with open(args.rows, "a") as f:
                    f.write(json.dumps(row, default=float) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"measured": measured, "rows": rows}, indent=1, default=float))
    print(section(rows, measured))
    return 0


# ----------------------------------------------------------------------------- the docs/BENCHMARKS.md section

TOLERANCE = 1.10  # adopt curvlinops only if within 10% of ours in HVP time and in memory, in every case


def decision(rows: list[dict]) -> tuple[bool, list[str]]:
    """(adopt?, the cases and measures where curvlinops is more than 10% worse)."""
    worse = []
    for r in rows:
        case = f"{r['setting']} {r['size']}"
        if r["curvlinops"][0] > TOLERANCE * r["ours"][0]:
            worse.append(f"{case}: HVP {r['curvlinops'][0] / r['ours'][0]:.2f}x ours")
        mem = r["memory"]
        if mem["curvlinops"]["peak_rss_mb"] > TOLERANCE * mem["ours"]["peak_rss_mb"]:
            worse.append(f"{case}: peak RSS {mem['curvlinops']['peak_rss_mb'] / mem['ours']['peak_rss_mb']:.2f}x ours")
    return not worse, worse


def section(rows: list[dict], measured: str, notes: str = "") -> str:
    """The BENCHMARKS.md table and decision for a recorded run of this script (``notes``: what the record's
    author added by hand, e.g. a case that could not be measured)."""
    if not rows:
        return ("## curvlinops HessianLinearOperator vs the hand-written FullBatchHVP\n\nNot measured "
                "(run benchmarks/bench_curvlinops.py with curvlinops installed; see its docstring).")
    ms = lambda t: f"{1e3 * t[0]:.1f} ({1e3 * t[1]:.1f}-{1e3 * t[2]:.1f})"  # noqa: E731
    lines = ["## curvlinops HessianLinearOperator vs the hand-written FullBatchHVP", "",
             f"`benchmarks/bench_curvlinops.py`, {measured}. Seed-0 initial weights, real 5k subsets; quick = the "
             "Hessian examples of config.quick.yaml, paper = all 5,000. HVP: median (min-max) ms of interleaved "
             "repeats, ours with the cached graph as the pipeline runs it. Peak RSS: a fresh process per operator "
             "(same model and data; growth = over its RSS before the operator was built). eigsh: both behind "
             "the same ARPACK driver (top_eigenpairs, float32, tol 1e-3, same start).", "",
             "| setting | size | n | d | HVP ms ours | HVP ms curvlinops | ratio | peak RSS MB ours / curvlinops "
             "(growth) | eigsh s ours / curvlinops | HVPs ours / curvlinops | max rel. eigenvalue diff |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        m = r["memory"]
        eig = (f"{r['eigsh_s']['ours']:.1f} / {r['eigsh_s']['curvlinops']:.1f}", f"{r['n_hvp']['ours']} / "
               f"{r['n_hvp']['curvlinops']}", f"{r['eig_rel_diff']:.1e}") if "eigsh_s" in r else ("-", "-", "-")
        lines.append(f"| {r['setting']} | {r['size']} | {r['n']} | {r['d']:,} | {ms(r['ours'])} | "
                     f"{ms(r['curvlinops'])} | {r['curvlinops'][0] / r['ours'][0]:.2f} | "
                     f"{m['ours']['peak_rss_mb']:.0f} / {m['curvlinops']['peak_rss_mb']:.0f} "
                     f"({m['ours']['growth_mb']:.0f} / {m['curvlinops']['growth_mb']:.0f}) | {' | '.join(eig)} |")
    adopt, worse = decision(rows)
    lines += ["", "**Decision: " + ("adopt curvlinops** (within 10% everywhere)." if adopt else
              "keep FullBatchHVP**: curvlinops is more than 10% worse in " + "; ".join(worse) + ".")]
    if notes:
        lines += ["", notes]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
