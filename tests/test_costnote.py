"""`make all` at paper scale on a machine without a GPU says what it will cost before any job starts."""

import json
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


def test_the_cli_never_blocks_and_make_all_calls_it_first():
    proc = subprocess.run([sys.executable, "-m", "sharpgaps", "cost-note", "config.quick.yaml"], cwd=REPO,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0 and proc.stderr == ""
    make = (REPO / "Makefile").read_text()
    all_target = make.split("\nall: setup\n", 1)[1].split("\n\n", 1)[0]
    assert all_target.index("cost-note") < all_target.index("snakemake")
