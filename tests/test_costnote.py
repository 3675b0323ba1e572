"""`make all` at paper scale on a machine without a GPU says what it will cost before any job starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

from sharpgaps.pipeline import costnote

REPO = Path(__file__).resolve().parents[1]


def test_paper_config_on_cpu_prints_the_projection_and_the_quick_command(monkeypatch):
    monkeypatch.setattr(costnote, "gpu_visible", lambda: False)
    text = costnote.note(REPO / "config.yaml", REPO)
    summ = next(r for r in json.loads((REPO / "docs/BENCHMARKS.json").read_text())["paper_scale"]
                if r["rule"] == "summary")
    assert f"{summ['jobs']} jobs" in text and f"{summ['cpu_h']:.0f} CPU job-hours" in text
    assert "make all SCALE=quick" in text and "Continuing" in text


def test_quiet_for_other_scales_and_where_a_gpu_is(monkeypatch, tmp_path):
    monkeypatch.setattr(costnote, "gpu_visible", lambda: False)
    assert costnote.note(REPO / "config.quick.yaml", REPO) is None
    assert costnote.note(REPO / ".test/config.yaml", REPO) is None
    monkeypatch.setattr(costnote, "gpu_visible", lambda: True)
    assert costnote.note(REPO / "config.yaml", REPO) is None  # device: auto with a GPU
    repo = tmp_path
    (repo / "config.yaml").write_text("device: cpu\n")
    assert "no cost projection is recorded" in costnote.note(repo / "config.yaml", repo)  # no docs/ here
    (repo / "config.yaml").write_text("device: cuda\n")
    assert costnote.note(repo / "config.yaml", repo) is None


def test_make_all_stops_at_the_paper_scale_without_a_gpu_unless_confirmed(monkeypatch):
    """The first command never starts the paper scale on a CPU-only machine by accident: `cost-note --stop` (what
    `make all` runs without CONFIRM=1) ends the run after the note, naming both ways forward; other scales pass."""
    monkeypatch.setattr(costnote, "gpu_visible", lambda: False)
    assert costnote.note(REPO / "config.yaml", REPO, stop=True).endswith(
        "run `make all SCALE=quick` for the quick scale, or `make all CONFIRM=1` to run the paper scale here anyway.")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, whatever this machine has
    cmd = [sys.executable, "-m", "sharpgaps", "cost-note"]
    stopped = subprocess.run([*cmd, "config.yaml", "--stop"], cwd=REPO, env=env, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=600)
    assert stopped.returncode == 3 and "make all CONFIRM=1" in stopped.stderr and "SCALE=quick" in stopped.stderr
    quick = subprocess.run([*cmd, "config.quick.yaml", "--stop"], cwd=REPO, env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=600)
    assert quick.returncode == 0 and quick.stderr == ""
    # make all: --stop unless CONFIRM=1, and the machine's cores by default
    # a user's shell: no make variables or thread caps inherited from a `make test` around this test
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "CORES", "CONFIRM",
                                                             "SCALE", "OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    plan = lambda *args: subprocess.run(["make", "-n", "all", *args], cwd=REPO, capture_output=True,  # noqa: E731
                                        text=True, check=True, env=clean).stdout
    cores = str(len(os.sched_getaffinity(0)))  # the CPUs this process may use, as nproc counts them
    assert "cost-note config.yaml --stop" in plan() and f"--cores {cores} " in plan()
    assert "--stop" not in plan("CONFIRM=1") and f"--cores {cores} " in plan("SCALE=smoke")
    assert "--configfile .test/config.yaml" in plan("SCALE=smoke")


def test_the_cli_never_blocks_and_make_all_calls_it_first():
    proc = subprocess.run([sys.executable, "-m", "sharpgaps", "cost-note", "config.quick.yaml"], cwd=REPO,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0 and proc.stderr == ""
    make = (REPO / "Makefile").read_text()
    all_target = make.split("\nall: setup\n", 1)[1].split("\n\n", 1)[0]
    assert all_target.index("cost-note") < all_target.index("snakemake")


def test_make_unlock_runs_the_venvs_snakemake_for_the_scale():
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SCALE")}
    plan = subprocess.run(["make", "-n", "unlock", "SCALE=quick"], cwd=REPO, capture_output=True, text=True,
                          check=True, env=clean).stdout
    assert ".venv/bin/snakemake --unlock --cores 1 --configfile config.quick.yaml" in plan
