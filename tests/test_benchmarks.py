"""The benchmark script runs end to end at tiny sizes and produces every table (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_script_produces_every_table(tmp_path):
    out = tmp_path / "BENCH.md"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/run.py"), "--quick", "--threads", "1",
                           "--out", str(out), "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("Simulated Local SGD step", "Full-batch HVP vs full-batch gradient", "Top-k eigensolver",
                    "Whole DAG", "Snakemake overhead"):
        assert heading in text
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["K"] for r in rows["engine"]] == [2, 4]
    assert {r["model"] for r in rows["hvp"]} == {"fc_tanh", "cnn_relu", "transformer"}
    assert {r["op"] for r in rows["hvp"]} >= {"gradient", "hvp_cached_graph", "hvp_rebuild_graph"}
    assert {(r["solver"], r["start"]) for r in rows["eigensolver"]} >= {("eigsh", "cold"), ("eigsh", "warm"),
                                                                        ("power_oracle", "cold")}
    assert all(r["n_hvp"] > 0 for r in rows["eigensolver"])
    assert rows["snakemake"][0]["median_s"] > 0
