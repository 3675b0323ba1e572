"""The specs own the defaults: the schema states the same ones, and every config key fills one spec field."""

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml

from sharpgaps.core import specs
from sharpgaps.pipeline.config import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow/schemas/config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
# the schema's properties of each config section that builds a spec
SECTION_KEYS = {
    "geometry": SCHEMA["definitions"]["geometrykeys"]["properties"],
    "restricted": SCHEMA["definitions"]["restrictkeys"]["properties"],
    "theory": SCHEMA["properties"]["theory"]["properties"],
    "estimators": SCHEMA["definitions"]["estimatorkeys"]["properties"],
    "mechanism": SCHEMA["definitions"]["mechanismkeys"]["properties"],
}


def stated_default(prop: dict):
    """The default the schema states for a key: its `default`, or an "unset = VALUE" in its description
    (keys the schema must not fill in, so that existing job parameters and path digests stay as they are)."""
    if "default" in prop:
        return prop["default"]
    m = re.search(r"\bunset = ([^\s,;()]+)", prop.get("description", ""))
    return yaml.safe_load(m.group(1)) if m else MISSING


STATED = [(section, key, stated_default(prop)) for section, props in SECTION_KEYS.items()
          for key, prop in props.items() if stated_default(prop) is not MISSING]


def test_sections_are_the_specs_sections():
    assert set(SECTION_KEYS) == set(specs.SECTIONS)


@pytest.mark.parametrize("section", SECTION_KEYS)
def test_every_config_key_fills_a_spec_field(section):
    for key in SECTION_KEYS[section]:
        specs.spec_field(section, key)  # KeyError names the key no spec takes


@pytest.mark.parametrize("section", SECTION_KEYS)
def test_every_section_states_some_default(section):
    """Guards the comparison below against matching nothing (a renamed schema definition, say)."""
    assert any(s == section for s, _, _ in STATED)


@pytest.mark.parametrize("section,key,stated", STATED, ids=[f"{s}.{k}" for s, k, _ in STATED])
def test_schema_defaults_are_the_spec_defaults(section, key, stated):
    want = tuple(stated) if isinstance(stated, list) else stated
    assert specs.config_default(section, key) == want, f"{SCHEMA_PATH.name}: {section}.{key}"


def test_config_names_map_to_existing_fields():
    for section, names in specs.CONFIG_NAMES.items():
        owned = {f.name for cls in specs.SECTIONS[section] for f in fields(cls)}
        assert set(names.values()) <= owned, section


def test_restricted_spec_from_config_renames_and_skips_branch_keys():
    params = {"branch_at": 0.5, "modes": ["dom"], "rounds": 6, "gap_m": 3, "gap_window": 2, "tol": 1e-4}
    rs = specs.RestrictSpec.from_config(params, "gapdom", k=10)
    assert (rs.mode, rs.rounds, rs.m, rs.window, rs.tol, rs.k) == ("gapdom", 6, 3, 2, 1e-4, 10)
    assert (rs.refresh, rs.lanczos_dtype) == (specs.config_default("restricted", "refresh"), specs.LANCZOS_DTYPE)
    assert rs.gap_dim == 3 and specs.RestrictSpec.from_config({}, "dom", k=10).gap_dim == 10
    with pytest.raises(KeyError, match="restricted.branch_round"):
        specs.RestrictSpec.from_config({"branch_round": 7}, "dom", k=10)


def test_geometry_spec_from_config_and_tag():
    g = specs.GeometrySpec.from_config({"m_list": [1, 2], "tol": 1e-3, "hessian_examples": 300}, k=10)
    assert g.m_list == (1, 2) and g.k == 10 and g.grad_chunk_size == 256
    assert g.tag() == "H300_tol0.001_x0"
    assert specs.GeometrySpec.from_config({}, k=2).tag() == "Hall_tol0.001_x0"


def test_restricted_tag_params_are_the_tagged_keys():
    """restricted_tag digests restricted_params: a key added to them renames every restricted output, so they
    are exactly RESTRICTED_TAGGED (with its defaults) unless a config sets another key."""
    cfg = validate(yaml.safe_load((REPO / ".test/config.yaml").read_text()), SCHEMA_PATH)
    p = specs.restricted_params(cfg, "mnist_fc")
    assert set(p) == set(specs.RESTRICTED_TAGGED)
    assert p["branch_chi_k"] == cfg["restricted"]["branch_chi_k"] and p["branch_consecutive"] == 2


def test_validation_takes_unset_keys_from_the_specs():
    """config._rank_problems checks what the jobs will run: an unset gap_window is RestrictSpec's 4 (the smoke
    cifar_cnn run, K=4, then spans (K-1)*4 = 12 >= k = 10 gap directions), an unset m_list GeometrySpec's."""
    from sharpgaps.pipeline.config import ConfigError

    cfg = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    del cfg["restricted"]["gap_window"], cfg["settings"]["cifar_cnn"]["restricted"]
    validate(cfg, SCHEMA_PATH)
    del cfg["geometry"]["m_list"]
    with pytest.raises(ConfigError, match=r"geometry.m_list: \[16\] exceed"):  # the largest rank is (8-1)*2 = 14
        validate(cfg, SCHEMA_PATH)


def test_estimators_take_per_setting_overrides():
    """settings.<name>.estimators overrides the section for that setting only (its own table tag), and the
    schema names an unknown key there."""
    cfg = yaml.safe_load((REPO / "config.quick.yaml").read_text())
    cfg["estimators"] = {"krylov_hvps": [10, 20], "m_list": [1, 2]}
    cfg["settings"]["sst2_transformer"]["estimators"] = {"krylov_hvps": [4, 10]}
    cfg["settings"]["mnist_fc"].pop("estimators", None)
    assert specs.estimator_params(cfg, "sst2_transformer") == {"krylov_hvps": [4, 10], "m_list": [1, 2]}
    assert specs.estimator_params(cfg, "mnist_fc") == {"krylov_hvps": [10, 20], "m_list": [1, 2]}
    validate(cfg, SCHEMA_PATH)
    cfg["settings"]["sst2_transformer"]["estimators"]["krylov_budget"] = [4]
    with pytest.raises(Exception, match="krylov_budget"):
        validate(cfg, SCHEMA_PATH)


def test_branch_rule_waits_for_alignment_at_consecutive_checkpoints():
    from sharpgaps.core.specs import BranchSpec

    ckpts = [4, 8, 16, 32, 64]
    chi = {4: 0.5, 8: 0.93, 16: 0.85, 32: 0.91, 64: 0.95}
    spec = BranchSpec(branch_chi_k=0.9, branch_consecutive=2)
    assert spec.choose(ckpts, 64, chi) == (64, "chi_k >= 0.9 at 2 checkpoints in a row")  # 8 alone is not enough
    assert BranchSpec(branch_chi_k=0.9, branch_consecutive=1).choose(ckpts, 64, chi)[0] == 8
    round_, why = BranchSpec(branch_chi_k=0.99).choose(ckpts, 64, chi)
    assert round_ == 64 and why.startswith("fallback") and "0.950" in why  # never aligned: said, not hidden
    # the fallback is the most aligned checkpoint (earliest of ties), not the last one
    tied = {4: 0.5, 8: 0.93, 16: 0.85, 32: 0.93, 64: 0.7}
    assert BranchSpec(branch_chi_k=0.99).choose(ckpts, 64, tied)[0] == 8
    assert BranchSpec(branch_chi_k=None, branch_at=0.25).choose(ckpts, 64, chi) == (16, "fraction 0.25")
    with pytest.raises(ValueError, match="no chi_k at checkpoint rounds \\[64\\]"):
        spec.choose(ckpts, 64, {c: v for c, v in chi.items() if c != 64})
    assert spec.label() == "chi0.9x2mean" and BranchSpec(branch_scope="seed").label() == "chi0.9x2"
    with pytest.raises(ValueError, match="branch_scope.*'setting', 'seed'"):
        BranchSpec(branch_scope="run")
    assert BranchSpec(branch_chi_k=None, branch_at=0.25).label() == "at0.25"


TRAIN_PROPS = SCHEMA["definitions"]["trainkeys"]["properties"]


@pytest.mark.parametrize("key", ["partition", "alpha", "momentum", "momentum_buffers"])
def test_schema_states_the_run_spec_defaults_of_the_optional_train_keys(key):
    """train.partition/alpha/momentum/momentum_buffers: the schema's "unset = X" is RunSpec's field default (the
    schema fills none in: a config that leaves them out keeps every run id and job parameter)."""
    assert "default" not in TRAIN_PROPS[key]
    assert stated_default(TRAIN_PROPS[key]) == specs.run_default(key), f"{SCHEMA_PATH.name}: train.{key}"
    assert {k for pair in specs.OPTIONAL_RUN_KEYS for k in pair} == {"partition", "alpha", "momentum",
                                                                       "momentum_buffers"}


def test_run_spec_checks_partition_and_momentum():
    base = dict(K=2, tau=1, b=1, lr=0.1, rounds=1, window=1, seed=0, checkpoints=(1,))
    for bad, match in [({"partition": "dirichlet"}, "train.alpha: partition dirichlet needs"),
                       ({"alpha": 0.5}, "train.alpha: 0.5 is set but train.partition is iid"),
                       ({"partition": "shards"}, "train.partition: 'shards'"),
                       ({"momentum": 1.0}, r"train.momentum: 1.0; allowed: 0 <= momentum < 1"),
                       ({"momentum": 0.9, "momentum_buffers": "sum"}, "train.momentum_buffers: 'sum'")]:
        with pytest.raises(ValueError, match=match):
            specs.RunSpec(**base, **bad)
    spec = specs.RunSpec(**base, partition="dirichlet", alpha=1, momentum=0.5, momentum_buffers="keep")
    assert (spec.alpha, spec.momentum) == (1.0, 0.5) and isinstance(spec.alpha, float)
    assert spec.as_dict()["alpha"] == 1.0 and spec.as_dict()["momentum_buffers"] == "keep"
    plain = specs.RunSpec(**base).as_dict()
    assert not set(plain) & {"partition", "alpha", "momentum", "momentum_buffers"}  # recorded as before
    run = {"K": 2, "tau": 1, "b": 1, "lr": 0.1, "local_steps": 3, "window": 1, "seed": 0, "checkpoints": {"count": 1}}
    assert specs.RunSpec.from_run({**run, "momentum": 0.9}).momentum_buffers == specs.run_default("momentum_buffers")
