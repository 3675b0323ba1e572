"""A Local SGD run on disk: rounds, checkpoints (average + gap window), metrics, resume.

Files (all written atomically):
  work_dir/state.pt            resume state at the last saved round boundary
  work_dir/ckpt/r{round}.pt    checkpoint (checkpoint_path): average parameters, the gaps of the last W rounds, metrics,
                               and the averages of the HISTORY_ROUNDS(spec) = K*W rounds before it (history_rounds,
                               theta_history): what the update- and gradient-history estimators replay
                               (sharpgaps.studies.estimators; docs/FIDELITY.md, "Estimator history")
  work_dir/metrics.csv         one row per checkpoint (written at the end)
  work_dir/rounds.csv          one row per round: mean minibatch loss, mean/max gap norm
A run killed at any moment restarts from ``state.pt`` and ends bitwise identical (on CPU) to an
uninterrupted run: the minibatch schedule is stateless and every worker equals the average at a
round boundary, so the state is just (round, average, gap window, logs), plus the momentum buffers of a run with
momentum (``momentum``: the average buffer, or every worker's when kept; reset ones are zero there).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ..core.atomic import load_recomputable, save_frame, save_json, save_torch
from ..core.flat import flatten
from ..core.grid import digest
from ..core.specs import RunSpec
from ..data.sources import file_digest
from .localsgd import SimulatedLocalSGD, evaluate
from .losses import constant_loss
from .objective import Objective

CKPT_FORMAT = 2  # 2: + theta_history / history_rounds (format 1 checkpoints lack them)


def history_rounds(spec: RunSpec) -> int:
    """Round-start averages a checkpoint keeps before its own round: n = K*W, the gap matrix's vector count."""
    return spec.K * spec.window


class DivergenceError(RuntimeError):
    pass


def check_finite(losses: torch.Tensor, what: str, rnd: int, first_step: int, lr: float) -> None:
    """Stop a diverged run, naming it, the round and the losses, before anything is written from it."""
    if not torch.isfinite(losses).all():
        per_step = losses.reshape(len(losses), -1).mean(1)  # over workers; one value per local step
        shown = ", ".join(f"{float(v):.4g}" for v in per_step[:8])
        raise DivergenceError(
            f"{what} diverged in round {rnd} (local steps {first_step}..{first_step + len(losses) - 1}): "
            f"minibatch loss [{shown}{', ...' if len(losses) > 8 else ''}] is not finite. "
            f"Lower the learning rate (lr={lr}) or check the data; nothing from this round was saved."
        )


CKPT_DIR = "ckpt"  # the checkpoint directory, in a run's work dir and in its published outputs


def checkpoint_path(ckpt_dir: str | Path, rnd: int) -> Path:
    """Round ``rnd``'s checkpoint file in a checkpoint directory (zero-padded: name order is round order)."""
    return Path(ckpt_dir) / f"r{rnd:06d}.pt"


def checkpoint_round(path: str | Path) -> int:
    """The round of a checkpoint file named by checkpoint_path."""
    return int(Path(path).stem[1:])


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The checkpoint files of a checkpoint directory, in round order."""
    return sorted(Path(ckpt_dir).glob("r*.pt"))


MANIFEST = "checkpoints.json"  # beside a published checkpoint dir: its rounds and each file's sha256


class CheckpointsInvalid(RuntimeError):
    """A run's published checkpoints are not the ones its spec implies (missing, extra, altered)."""


def checkpoint_manifest(ckpt_dir: str | Path) -> Path:
    """The manifest of a published checkpoint dir (a declared output of the train step, beside the dir)."""
    return Path(ckpt_dir).parent / MANIFEST


def write_manifest(ckpt_dir: str | Path) -> dict:
    """Record the rounds and sha256 of every checkpoint in ``ckpt_dir`` (after it is published whole)."""
    files = list_checkpoints(ckpt_dir)
    manifest = {"rounds": [checkpoint_round(f) for f in files], "sha256": {f.name: file_digest(f) for f in files}}
    save_json(manifest, checkpoint_manifest(ckpt_dir))
    return manifest


def verified_checkpoints(ckpt_dir: str | Path, rounds) -> list[Path]:
    """The checkpoint files of ``rounds`` (the run spec's) in ``ckpt_dir``, each checked against the manifest the
    train step wrote. Raises CheckpointsInvalid naming every missing, unlisted or altered round, and the fix:
    rerunning with ``--forcerun <manifest>`` makes Snakemake rerun the train step and everything after it (a
    deleted file alone would not: Snakemake does not rebuild a missing intermediate whose products are current)."""
    ckpt_dir, manifest_path = Path(ckpt_dir), checkpoint_manifest(ckpt_dir)
    fix = (f"Rerun the same command with `--forcerun {manifest_path}` added: Snakemake then reruns this run's train "
           "step, which rebuilds every checkpoint (the same numbers: training is deterministic), and every job "
           "downstream of it.")
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = dict(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointsInvalid(f"{manifest_path}: unreadable checkpoint manifest ({type(exc).__name__}). {fix}") from None
    problems = []
    for rnd in sorted(set(rounds)):
        path = checkpoint_path(ckpt_dir, rnd)
        if path.name not in recorded:
            problems.append(f"round {rnd} ({path.name}) is not in the manifest")
        elif not path.is_file():
            problems.append(f"round {rnd} ({path.name}) is missing")
        elif file_digest(path) != recorded[path.name]:
            problems.append(f"round {rnd} ({path.name}) differs from what train wrote (truncated or altered)")
    if problems:
        raise CheckpointsInvalid(f"checkpoints in {ckpt_dir}: " + "; ".join(problems) + f". {fix}")
    return [checkpoint_path(ckpt_dir, r) for r in sorted(set(rounds))]


def spec_digest(spec: RunSpec, extra: dict) -> str:
    blob = json.dumps({"spec": spec.as_dict(), **extra}, sort_keys=True, default=str)
    return digest(blob, 16)


def _needed_for_window(rnd: int, checkpoints: tuple[int, ...], window: int) -> bool:
    return any(c - window < rnd <= c for c in checkpoints)


def damaged_checkpoints(work_dir: str | Path, state: dict, run_name: str = "run") -> list[str]:
    """The checkpoints a resume state vouches for that are gone or altered under ``work_dir`` (announced: the run
    then trains again from round 0, since a state cannot rebuild checkpoints it has passed)."""
    ckpt_dir = Path(work_dir) / CKPT_DIR
    damaged = [name for name, sha in state.get("sha256", {}).items()
               if not (ckpt_dir / name).is_file() or file_digest(ckpt_dir / name) != sha]
    if damaged:
        print(f"[{run_name}] checkpoints {damaged} under {work_dir} are missing or altered: training again from "
              "round 0", file=sys.stderr)
    return damaged


def _needed_for_history(rnd: int, checkpoints: tuple[int, ...], n: int) -> bool:
    """Whether the average at the end of round ``rnd`` (0: the initial point) is in some checkpoint's history."""
    return any(c - n <= rnd < c for c in checkpoints)


def train_run(objective: Objective, spec: RunSpec, work_dir: str | Path, *, run_name: str = "run",
              run_info: dict | None = None, engine_factory=SimulatedLocalSGD, resume: bool = True,
              resume_every_s: float = 120.0, stop_after_round: int | None = None, progress: bool = True) -> list[Path]:
    """Train ``spec`` and write checkpoints under ``work_dir``; return the checkpoint paths in order.

    ``stop_after_round`` simulates a kill (used by tests): state is saved and the call returns early.
    """
    work_dir = Path(work_dir)
    run_info = dict(run_info or {})
    digest = spec_digest(spec, run_info)
    model, loss_fn = objective.model, objective.loss_fn
    x_tr, y_tr, x_te, y_te = objective.x, objective.y, objective.x_test, objective.y_test
    names = [n for n, _ in model.named_parameters()]
    shapes = [list(p.shape) for _, p in model.named_parameters()]

    state_file = work_dir / "state.pt"
    state = None
    if resume:
        state = load_recomputable(state_file, f"[{run_name}] resume state")
        if state is not None and state["digest"] != digest:
            print(f"[{run_name}] stale resume state (different spec) ignored: {state_file}", file=sys.stderr)
            state = None
        if state is not None and damaged_checkpoints(work_dir, state, run_name):
            state = None
    if state is None:
        theta = {n: p.detach().clone() for n, p in model.named_parameters()}
        state = {"digest": digest, "round": 0, "theta": theta, "window": [], "rounds": [], "ckpts": [], "history": [],
                 "sha256": {}}
    else:
        print(f"[{run_name}] resuming from round {state['round']}", file=sys.stderr)

    engine = engine_factory(model, loss_fn, x_tr, y_tr, spec, theta=state["theta"])
    engine.load_momentum_state(state.get("momentum"))
    window = deque(state["window"], maxlen=spec.window)
    checkpoints = tuple(sorted(set(spec.checkpoints)))
    n_hist = history_rounds(spec)
    history = deque(state.get("history", []), maxlen=n_hist)  # (round, flat average), oldest first
    if state["round"] == 0 and not history and _needed_for_history(0, checkpoints, n_hist):
        history.append((0, flatten(state["theta"]).clone()))
    last_save = time.monotonic()

    def save_state(rnd, theta):
        momentum = engine.momentum_state()  # None for plain SGD: its state keeps its old keys
        save_torch({**state, "round": rnd, "theta": theta, "window": list(window), "history": list(history),
                    **({"momentum": momentum} if momentum is not None else {})}, state_file)

    bar = tqdm(total=spec.rounds, initial=state["round"], desc=run_name, file=sys.stderr, mininterval=10,
               ascii=True, disable=not progress)
    for rnd in range(state["round"] + 1, spec.rounds + 1):
        losses = torch.stack([engine.local_step((rnd - 1) * spec.tau + s) for s in range(spec.tau)])
        check_finite(losses, f"run '{run_name}'", rnd, (rnd - 1) * spec.tau, spec.lr)
        theta, gaps = engine.end_round()
        norms = gaps.norm(dim=1)
        state["rounds"].append({"round": rnd, "step": rnd * spec.tau, "batch_loss": float(losses.mean()),
                                "gap_norm_mean": float(norms.mean()), "gap_norm_max": float(norms.max())})
        if _needed_for_window(rnd, checkpoints, spec.window):
            window.append((rnd, gaps.clone()))
        if rnd in checkpoints:
            state["ckpts"].append(_write_checkpoint(work_dir, rnd, spec, model, loss_fn, theta, window,
                                                    names, shapes, norms, (x_tr, y_tr, x_te, y_te), run_info,
                                                    history))
            written = checkpoint_path(work_dir / CKPT_DIR, rnd)
            state.setdefault("sha256", {})[written.name] = file_digest(written)
        if _needed_for_history(rnd, checkpoints, n_hist):
            history.append((rnd, flatten(theta).clone()))
        bar.update(1)
        if stop_after_round is not None and rnd >= stop_after_round:
            save_state(rnd, theta)
            bar.close()
            return []
        if rnd in checkpoints or time.monotonic() - last_save > resume_every_s:
            save_state(rnd, theta)
            last_save = time.monotonic()
    bar.close()
    save_state(spec.rounds, engine_theta(engine))
    save_frame(pd.DataFrame(state["ckpts"]), work_dir / "metrics.csv")
    save_frame(pd.DataFrame(state["rounds"]), work_dir / "rounds.csv")
    return [checkpoint_path(work_dir / CKPT_DIR, c) for c in checkpoints]


def engine_theta(engine) -> dict[str, torch.Tensor]:
    return {n: p[0].clone() for n, p in engine.params.items()}


def _write_checkpoint(work_dir, rnd, spec, model, loss_fn, theta, window, names, shapes, norms, data, run_info,
                      history=()):
    x_tr, y_tr, x_te, y_te = data
    train_loss, train_acc = evaluate(model, theta, loss_fn, x_tr, y_tr)
    test_loss, test_acc = evaluate(model, theta, loss_fn, x_te, y_te)
    metrics = {"round": rnd, "step": rnd * spec.tau, "train_loss": train_loss, "train_acc": train_acc,
               "test_loss": test_loss, "test_acc": test_acc, "gap_norm_mean": float(norms.mean()),
               "gap_norm_max": float(norms.max()), "const_loss": constant_loss(loss_fn, y_tr)}
    rounds = [r for r, _ in window if rnd - spec.window < r <= rnd]
    gaps = torch.stack([g for r, g in window if rnd - spec.window < r <= rnd])  # (W', K, d), oldest first
    hist = [(r, t) for r, t in history if rnd - history_rounds(spec) <= r < rnd]  # averages before this round
    save_torch({
        "format": CKPT_FORMAT, "run": {**run_info, **spec.as_dict()}, "round": rnd, "step": rnd * spec.tau,
        "param_names": names, "param_shapes": shapes, "theta": flatten(theta).clone(),
        "gaps": gaps, "gap_rounds": rounds, "worker_gap_norms": norms.tolist(), "metrics": metrics,
        "history_rounds": [r for r, _ in hist],
        "theta_history": torch.stack([t for _, t in hist]) if hist else torch.zeros(0, len(flatten(theta))),
    }, checkpoint_path(work_dir / CKPT_DIR, rnd))
    return metrics
