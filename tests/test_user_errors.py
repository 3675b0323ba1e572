"""What a user sees when something is wrong, each tried as a new user would.

None of these starts the smoke DAG: they stop before any job, or run only the data jobs of a fresh workdir.
"""

import shutil
import subprocess
import sys

import pytest
import yaml

from sharpgaps.pipeline.config import ConfigError, read_yaml, validate
from tests.helpers import REPO, SMOKE_CONFIG, snakemake, workflow_copy

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
SUBSET = "results/data/mnist/subset_n1000_s0_test500.pt"


def _smoke():
    return yaml.safe_load(SMOKE_CONFIG.read_text())


def _override(cfg, overrides):
    """What Snakemake does with --config: a recursive merge of the (string-valued) nested overrides."""
    def merge(node, over):
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(node.get(k), dict):
                merge(node[k], v)
            else:
                node[k] = v
    merge(cfg, overrides)
    return cfg


# ------------------------------------------------------------------------------------ failed job's log

def test_failed_jobs_message_is_on_the_console(tmp_path, data_dir):
    raw = tmp_path / "data"
    shutil.copytree(data_dir / "mnist", raw / "mnist")
    victim = next(p for p in sorted((raw / "mnist").iterdir()) if "train-images" in p.name)
    victim.write_bytes(victim.read_bytes()[:1000])
    out = snakemake(tmp_path / "w", "--cores", "1", SUBSET, check=False, env={"SHARPGAPS_DATA_DIR": str(raw)})
    assert "Error in rule" in out
    # the log's own message, not only "check log file(s)"
    assert "Checksum mismatch" in out and str(victim) in out, out[-3000:]


# -------------------------------------------------------------------------------- nested --config values

def test_nested_override_strings_are_read_as_the_schema_types():
    over = {"geometry": {"m_list": ["1", "2"]}, "train": {"lr": "0.01", "window": "2"}}
    out = validate(_override(_smoke(), over), SCHEMA, overrides=over)
    assert out["geometry"]["m_list"] == [1, 2]
    assert out["train"]["lr"] == 0.01 and isinstance(out["train"]["window"], int)
    # the same strings from a config file (no override) are still rejected: coercion is for --config only
    with pytest.raises(ConfigError, match=r"geometry\.m_list\.0: '1' is not of type 'integer'"):
        validate(_override(_smoke(), {"geometry": {"m_list": ["1", "2"]}}), SCHEMA)


def test_nested_override_negative_lr_is_reported_as_negative():
    over = {"train": {"lr": "-0.1"}}
    with pytest.raises(ConfigError) as err:
        validate(_override(_smoke(), over), SCHEMA, overrides=over)
    assert "train.lr: -0.1 is less than or equal to the minimum of 0" in str(err.value)
    assert "not of type" not in str(err.value)


def test_nested_override_that_cannot_be_read_says_to_use_a_config_file():
    over = {"train": {"lr": "fast"}}
    with pytest.raises(ConfigError, match=r"train\.lr: 'fast' is not of type 'number' \(a nested --config value "
                                          r".*put nested keys in a config file \(--configfile\)"):
        validate(_override(_smoke(), over), SCHEMA, overrides=over)


def test_nested_override_through_snakemake_works(tmp_path):
    ok = snakemake(tmp_path, "-n", "--cores", "1", "all", "--config", 'geometry={"m_list": [1, 2]}')
    assert "rule geometry:" in ok


def test_nested_override_through_snakemake_reports_negative_lr(tmp_path):
    bad = snakemake(tmp_path, "-n", "--cores", "1", "all", "--config", 'train={"lr": -0.1}', check=False)
    assert "train.lr: -0.1 is less than or equal to the minimum of 0" in bad, bad[-2000:]


# ------------------------------------------------------------------------------------ invalid YAML file

def test_yaml_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  K: 4\n   tau: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 3, column 7: not valid YAML"):
        read_yaml(bad)
    # what `make all` runs before Snakemake (which reads --configfile files itself, naming no line)
    proc = subprocess.run([sys.executable, "-m", "sharpgaps", "check-config", str(SMOKE_CONFIG), str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and f"{bad}, line 3" in proc.stderr and "Traceback" not in proc.stderr
    assert "check-config $(CONFIG_$(SCALE))" in (REPO / "Makefile").read_text()


def test_unclosed_bracket_names_the_line_that_opens_it(tmp_path):
    """PyYAML fails a line after an unclosed '[': the message also names where the sequence starts."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_dir: x\ntrain: {seeds: [0, 1,\n  K: 4}\nsettings: {}\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(bad)
    text = str(err.value)
    assert "while parsing a flow sequence that starts at line 2, column 16:" in text, text
    assert "train: {seeds: [0, 1," in text  # the line to fix is shown, with a caret under the '['


def test_broken_default_config_yaml_names_file_and_line(tmp_path):
    work = workflow_copy(tmp_path / "wf")
    text = (work / "config.yaml").read_text().splitlines()
    i = next(n for n, line in enumerate(text) if line.startswith("train:"))
    text[i + 1] = "\t" + text[i + 1].lstrip()  # a tab indent, the classic
    (work / "config.yaml").write_text("\n".join(text) + "\n")
    out = snakemake(work, "-n", "--cores", "1", config=None, snakefile=work / "Snakefile", check=False)
    assert f"config.yaml, line {i + 2}, column 1: not valid YAML" in out, out[-2000:]


# ------------------------------------------------------------------------------------------- --cores 0

def test_cores_0_is_rejected_before_jobs_are_selected(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "0",
           "all", "--configfile", str(SMOKE_CONFIG)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # used to hang for ever
    assert proc.returncode != 0
    assert "--cores 0: no job can ever start" in proc.stderr + proc.stdout
    assert "Select jobs to execute" not in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------- data dir

def test_the_printed_data_commands_show_that_the_environment_variable_wins(tmp_path, data_dir):
    """The data jobs' printed commands name SHARPGAPS_DATA_DIR before the config key, as the jobs read them; the
    job's log says which directory it read."""
    out = snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/data/mnist/acquired.json")
    assert '--data-dir "${SHARPGAPS_DATA_DIR:-../shared/data}"' in out, out[-2000:]
    snakemake(tmp_path, "--cores", "1", "results/data/mnist/acquired.json", env={"SHARPGAPS_DATA_DIR": str(data_dir)})
    assert f"mnist: raw data from {data_dir.resolve()}" in (tmp_path / "results/logs/acquire/mnist.log").read_text()


# ------------------------------------------------------------------------------- the README's commands

def _readme_snakemake_commands() -> list[str]:
    block = (REPO / "README.md").read_text().split("Common variations:", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("snakemake ")]


def test_readme_commands_name_their_config_so_that_no_target_is_read_as_one(tmp_path):
    """`--configfile X target` reads the target as a second config file (Snakemake's traceback for a PDF, before
    this workflow is read); the README writes `--configfile=X`, which takes one value, and that exact order works."""
    commands = _readme_snakemake_commands()
    assert any("--configfile" in c for c in commands)
    assert all("--configfile=" in c for c in commands if "--configfile" in c), commands
    figure = next(c for c in commands if "--configfile=" in c and c.split()[-1].endswith(".pdf"))
    args = figure.split()[1:]
    out = snakemake(tmp_path, "-n", *args, config=None)
    assert "fig02_removal" in out and "Traceback" not in out, out[-2000:]
