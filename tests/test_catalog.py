"""Snakemake workflow catalog metadata: .snakemake-workflow-catalog.yml, config/README.md, workflow/Snakefile.

Offline: the metadata parses with the catalog's keys, the flags it names work in a dry run, and the
catalog's entry point (workflow/Snakefile) plans the same DAG as the top-level Snakefile.
"""

import shlex
import subprocess
import sys

import yaml

from tests.helpers import REPO, SMOKE_CONFIG, job_counts

CATALOG = REPO / ".snakemake-workflow-catalog.yml"


def _usage():
    return yaml.safe_load(CATALOG.read_text())["usage"]


def test_catalog_metadata_parses_with_the_catalogs_keys():
    usage = _usage()
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert usage["report"] is True
    flags = usage["mandatory-flags"]
    assert isinstance(flags["desc"], str) and flags["desc"].strip()
    assert isinstance(flags["flags"], (str, list))
    deploy = usage["software-stack-deployment"]
    assert set(deploy) <= {"conda", "apptainer", "apptainer+conda", "singularity", "singularity+conda"}
    assert all(isinstance(v, bool) for v in deploy.values()) and any(deploy.values())
    if deploy.get("conda"):  # the rules name the conda env, and it exists
        assert (REPO / "envs/sharpgaps.yaml").is_file()
        assert any("conda:" in p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    # the layout the catalog looks for, with Snakefile and config.yaml kept at the top
    for path in ("Snakefile", "config.yaml", "workflow/Snakefile", "config/README.md", "README.md"):
        assert (REPO / path).is_file(), path
    readme = (REPO / "README.md").read_text().lower()
    assert "snakemake" in readme and "workflow" in readme
    assert all(p.suffix == ".smk" for p in (REPO / "workflow/rules").iterdir() if p.is_file())


def test_config_readme_names_every_top_level_key():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    text = (REPO / "config/README.md").read_text()
    missing = [k for k in schema["properties"] if f"`{k}`" not in text]
    assert not missing, f"config/README.md does not mention {missing}"


def _dry_run(tmp_path, *args):
    cmd = [sys.executable, "-m", "snakemake", "-d", str(tmp_path), "-n", "--cores", "1", *args,
           "all", "--configfile", str(SMOKE_CONFIG)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return job_counts(proc.stdout + proc.stderr)


def test_catalog_flags_and_entry_point_dry_run_the_same_dag(tmp_path):
    flags = _usage()["mandatory-flags"]["flags"]
    flags = shlex.split(flags) if isinstance(flags, str) else flags
    via_catalog = _dry_run(tmp_path / "a", "-s", "workflow/Snakefile", *flags)
    top = _dry_run(tmp_path / "b")
    assert via_catalog == top and top.get("geometry", 0) > 0, (via_catalog, top)
