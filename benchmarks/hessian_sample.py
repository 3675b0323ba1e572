"""Is V_k from a Hessian sample the dominant subspace of the loss the workers train on?

The quick scale takes the Hessian of CIFAR-10 and SST-2 on the first 256 and 128 of the 5,000 training examples
(`geometry.hessian_examples`). At given checkpoints of a finished run, this computes the top-k eigenvectors of the
Hessian on N_H examples and on all of them, with the geometry stage's own solver settings, and prints their
overlap ||V_k(N_H)^T V_k(all)||_F^2 / k (1: the same subspace) and the top eigenvalues of both.

    python benchmarks/hessian_sample.py --run-dir results/quick/runs/cifar_cnn/<run> --config config.quick.yaml \\
        --setting cifar_cnn --rounds 12 150 --n-hessian 256 1024
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sharpgaps.core.atomic import load_torch
from sharpgaps.core.grid import parse_run_id
from sharpgaps.curvature.hessian import top_eigenpairs
from sharpgaps.curvature.metrics import subspace_overlap
from sharpgaps.engine.training import checkpoint_path
from sharpgaps.pipeline import jobs
from sharpgaps.pipeline.config import read_yaml, validate

REPO = Path(__file__).resolve().parents[1]


def top_k(job: jobs.RunInputs, flat_theta, n: int | None, k: int, tol: float, dtype: str):
    """V_k (d, k), the top eigenvalues, HVPs and seconds of the Hessian on the first n examples (None: all)."""
    objective = job.objective(hessian_examples=n)
    t0 = time.perf_counter()
    eig = top_eigenpairs(objective.hessian(objective.params(flat_theta)), k=k, tol=tol, dtype=dtype)
    return torch.from_numpy(eig.vectors[:, :k]), eig.values[:k], eig.n_hvp, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--config", required=True)
    ap.add_argument("--setting", required=True)
    ap.add_argument("--rounds", type=int, nargs="+", required=True)
    ap.add_argument("--n-hessian", type=int, nargs="+", required=True, help="sample sizes compared with all examples")
    ap.add_argument("--out", type=Path, help="append one JSON line per (round, N_H) here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    config = validate(read_yaml(a.config), REPO / "workflow/schemas/config.schema.yaml")
    s = config["settings"][a.setting]
    dataset = s["dataset"]
    run = {**parse_run_id(a.run_dir.name), "setting": a.setting, "model": s["model"], "dataset": dataset,
           "arch": s.get("arch", {}), "checkpoints": {"rounds": a.rounds}}
    results = Path(config["results_dir"])
    subset = next((results / "data" / dataset).glob("subset_*.pt"))
    job = jobs.load_run(run, subset, torch.device("cpu"))
    k = job.k
    geometry = {**config["geometry"], **s.get("geometry", {})}
    for rnd in a.rounds:
        ckpt = load_torch(checkpoint_path(a.run_dir / "ckpt", rnd))
        theta = ckpt["theta"]
        full, lam_full, hvp_full, s_full = top_k(job, theta, None, k, geometry["tol"], geometry["lanczos_dtype"])
        for n in a.n_hessian:
            part, lam, hvp, sec = top_k(job, theta, n, k, geometry["tol"], geometry["lanczos_dtype"])
            row = {"setting": a.setting, "run": a.run_dir.name, "round": rnd, "n_hessian": n,
                   "n_all": len(job.subset["y_train"]), "k": k, "overlap": subspace_overlap(full, part),
                   "lambda_all": [round(float(x), 4) for x in lam_full[:3]],
                   "lambda_sample": [round(float(x), 4) for x in lam[:3]],
                   "hvps_all": hvp_full, "hvps_sample": hvp, "seconds_all": round(s_full, 1), "seconds_sample": round(sec, 1)}
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
