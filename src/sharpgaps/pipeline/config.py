"""Config validation: JSON schema (types, ranges, defaults) then cross-key checks.

Every error names the offending key and says how to fix it, and all of it runs before any job.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

# jsonschema imports rfc3987_syntax, when installed (Jupyter's dependencies bring it), only to check the
# "iri"/"uri" string formats, which our schema does not use; its import compiles 38 grammars, about 2 s of every
# Snakemake start (profiled: most of a dry run). Marked absent before jsonschema's first import, it is skipped.
sys.modules.setdefault("rfc3987_syntax", None)
import jsonschema  # noqa: E402
import yaml  # noqa: E402

from ..core import grid, specs
from ..report.figures import SWEEPS


class ConfigError(ValueError):
    pass


def _with_defaults(validator_class):
    """A validator that fills in schema ``default`` values while validating (jsonschema FAQ recipe)."""
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "<top level>"


def _message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message plus the allowed values where it does not already state them."""
    v, value = error.validator, error.validator_value
    if v == "uniqueItems":
        return f"{error.message} (allowed: each value at most once)"
    if v == "minItems":
        return f"{error.message} (allowed: a list of at least {value} item{'s' if value > 1 else ''})"
    if v == "additionalProperties":
        return f"{error.message} (allowed keys: {', '.join(sorted(error.schema.get('properties', {})))})"
    if v == "oneOf":
        return f"{error.message} (allowed: {' | '.join(_describe(s) for s in value)})"
    return error.message


def _describe(schema: dict) -> str:
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    if "const" in schema:
        return str(schema["const"])
    return f"{schema.get('type', 'value')}" + (f" >= {schema['minimum']}" if "minimum" in schema else "")


NESTED_HINT = ("a nested --config value arrives as a string (Snakemake reads nested values with YAML's "
               "BaseLoader) and this one cannot be read as {want}; put nested keys in a config file "
               "(--configfile) instead")


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict; a syntax error names the file, line and column (Snakemake's own
    message names neither)."""
    path = Path(path)
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        lines = text.splitlines()

        def shown(mark) -> str:
            return f"\n    {lines[mark.line]}\n    {' ' * mark.column}^" if mark.line < len(lines) else ""

        mark, opened = exc.problem_mark or exc.context_mark, exc.context_mark
        if mark is None:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(x for x in (exc.context, exc.problem) if x)})") from None
        message = (f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML "
                   f"({exc.problem or exc.context}){shown(mark)}")
        # PyYAML reports an unclosed bracket or quote where parsing failed, often lines later; where it was opened
        # (the context mark) is usually the line to fix
        if exc.context and opened is not None and exc.problem_mark is not None and \
                (opened.line, opened.column) != (mark.line, mark.column):
            message += f"\n  {exc.context} that starts at line {opened.line + 1}, column {opened.column + 1}:{shown(opened)}"
        raise ConfigError(message) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys at the top level, not "
                          f"{type(data).__name__}")
    return data


def _string_leaves(overrides, path=()) -> set[tuple]:
    """Paths of the string values nested inside --config overrides (top-level values Snakemake types itself)."""
    out = set()
    items = overrides.items() if hasattr(overrides, "items") else enumerate(overrides) if isinstance(overrides, list) else ()
    for k, v in items:
        if isinstance(v, str) and path:
            out.add(path + (k,))
        elif isinstance(v, (list, dict)) or hasattr(v, "items"):
            out |= _string_leaves(v, path + (k,))
    return out


def _as_type(text: str, types) -> tuple[bool, object]:
    """``text`` read as one of the JSON-schema ``types`` (integer, number, boolean, null)."""
    for t in [types] if isinstance(types, str) else types:
        s = text.strip()
        if t in ("integer", "number") and re.fullmatch(r"[+-]?\d+", s):
            return True, int(s)
        if t == "number":
            try:
                return True, float(s)
            except ValueError:
                pass
        if t == "boolean" and s.lower() in ("true", "false"):
            return True, s.lower() == "true"
        if t == "null" and s in ("null", "~", "None", ""):
            return True, None
    return False, None


def _all_errors(errors):
    for e in errors:
        yield e
        yield from _all_errors(e.context or [])


def _set_path(node, path, value):
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def coerce_overrides(config: dict, overrides, validator) -> dict:
    """Nested --config values arrive as strings: where the schema wants a number, integer, boolean or null
    and the string reads as one, use that (``geometry={"m_list": [1, 2]}`` works; ``train={"lr": -0.1}``
    is then reported as a negative lr, not as a string)."""
    paths = _string_leaves(overrides or {})
    for _ in range(8):  # one pass per nesting level of oneOf/allOf at most
        changed = False
        for e in _all_errors(validator.iter_errors(copy.deepcopy(config))):
            path = tuple(e.absolute_path)
            if e.validator == "type" and path in paths and isinstance(e.instance, str):
                ok, value = _as_type(e.instance, e.validator_value)
                if ok:
                    _set_path(config, path, value)
                    changed = True
        if not changed:
            break
    return config


def validate(config: dict, schema_path: str | Path, overrides=None) -> dict:
    """Return a validated copy of ``config`` with defaults filled in, or raise ConfigError.

    ``overrides``: Snakemake's parsed --config values (``workflow.config_settings.config``); their nested
    strings are read as the numbers/booleans the schema wants, or reported with how to pass them instead."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = copy.deepcopy(config)
    validator = _with_defaults(jsonschema.Draft7Validator)(schema)
    config = coerce_overrides(config, overrides, validator)
    nested = _string_leaves(overrides or {})
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            line = f"  - {_key(e)}: {_message(e)}"
            if e.validator == "type" and tuple(e.absolute_path) in nested:
                want = e.validator_value if isinstance(e.validator_value, str) else " or ".join(e.validator_value)
                line += f" ({NESTED_HINT.format(want=want)})"
            lines.append(line)
        raise ConfigError("Invalid config (fix these keys):\n" + "\n".join(lines))
    problems = _part_problems(config)
    if not problems:
        config = select_part(config)
        problems = cross_checks(config)
    if problems:
        raise ConfigError("Invalid config (fix these keys):\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def part_selection(spec) -> tuple[list[str], list[str] | None]:
    """A `parts` entry as (its experiments, the settings it keeps or None for all)."""
    if isinstance(spec, dict):
        return spec["experiments"], spec.get("settings")
    return spec, None


def _part_problems(config: dict) -> list[str]:
    problems = []
    for name, spec in config["parts"].items():
        exps, only = part_selection(spec)
        problems += [f"parts.{name}: unknown experiment '{exp}' (defined: {sorted(config['experiments'])})"
                     for exp in exps if exp not in config["experiments"]]
        problems += [f"parts.{name}.settings: unknown setting '{s}' (defined: {sorted(config['settings'])})"
                     for s in only or [] if s not in config["settings"]]
        if only and not problems and not any(set(only) & set(config["experiments"][e]["settings"]) for e in exps):
            problems.append(f"parts.{name}.settings: none of {only} is a setting of its experiments {exps}")
    part = config["part"]
    if part is not None and part not in config["parts"]:
        problems.append(f"part: '{part}' is not a key of `parts` (defined: {sorted(config['parts'])}); allowed: one "
                        "of those, or null for every experiment")
    return problems


def select_part(config: dict) -> dict:
    """The config one release part runs: its experiments only (for its settings only, where it names some), written
    under results_dir/<part> (a tree of its own, so that each part starts from an empty one). Without `part`, the
    config itself."""
    part = config["part"]
    if part is None:
        return config
    config = copy.deepcopy(config)
    exps, only = part_selection(config["parts"][part])
    config["experiments"] = {e: config["experiments"][e] for e in exps}
    if only is not None:
        for name in exps:
            exp = config["experiments"][name]
            exp["settings"] = [s for s in exp["settings"] if s in only]
            if "per_setting" in exp:
                exp["per_setting"] = {s: v for s, v in exp["per_setting"].items() if s in only}
            if not exp["settings"]:
                del config["experiments"][name]
    config["results_dir"] = f"{config['results_dir'].rstrip('/')}/{part}"
    return config


def cross_checks(config: dict) -> list[str]:
    """Checks a schema cannot express: references between sections and per-run consistency."""
    problems = _partition_momentum_problems(config)
    if problems:
        return problems
    settings = config["settings"]
    for name, exp in config["experiments"].items():
        for s in exp["settings"]:
            if s not in settings:
                problems.append(f"experiments.{name}.settings: unknown setting '{s}' (defined: {sorted(settings)})")
        for s in exp.get("per_setting", {}):
            if s not in exp["settings"]:
                problems.append(f"experiments.{name}.per_setting.{s}: not among this experiment's settings")
        if not problems:
            try:
                grid.expand_runs(config, [name], strict=False)
            except ValueError as e:  # a sweep's `match` it cannot meet
                problems.append(str(e))
    for name, s in settings.items():
        ds = s["dataset"]
        if ds not in config.get("datasets", {}):
            problems.append(f"settings.{name}.dataset: '{ds}' has no entry under `datasets` (add `datasets: {{{ds}: {{}}}}`)")
        want = {"mnist": "fc_tanh", "cifar10": "cnn_relu", "sst2": "transformer"}
        if (s["model"] == "transformer") != (ds == "sst2"):
            problems.append(f"settings.{name}.model: '{s['model']}' cannot read dataset '{ds}' (use '{want[ds]}')")
        problems += [f"settings.{name}.arch: {p}" for p in specs.arch_problems(s["model"], s.get("arch", {}))]
    if problems:
        return problems
    problems += _device_problems(config) + _rank_problems(config)
    n_train = config["subset"]["n_train"]
    for run in grid.expand_runs(config, strict=False):
        where = f"run {grid.run_id(run)} (setting {run['setting']})"
        rounds = run["local_steps"] // run["tau"]
        if rounds < 1:
            problems.append(f"train.local_steps: {run['local_steps']} < tau={run['tau']} gives no round in {where} (allowed: local_steps >= tau)")
            continue
        if run["window"] > rounds:
            problems.append(f"train.window: W={run['window']} exceeds the {rounds} rounds of {where} (allowed: 1..{rounds})")
        explicit = run["checkpoints"].get("rounds")
        if explicit:
            late = [r for r in explicit if r > rounds]
            if late:
                problems.append(f"train.checkpoints.rounds: {late} beyond the last round {rounds} of {where} "
                                f"(local_steps // tau); allowed: 1..{rounds}")
        if config.get("engine") == "distributed" and run["K"] < config["nproc"]:
            problems.append(f"nproc: {config['nproc']} processes but K={run['K']} workers in {where} "
                            f"(engine: distributed needs K >= nproc); lower nproc or use engine: simulated")
        if run["b"] > n_train:
            problems.append(f"train.b: batch {run['b']} exceeds subset.n_train={n_train} in {where} (allowed: 1..{n_train})")
        # the shards themselves need the labels (the subset job's): the train job checks each holds b examples
        elif run.get("partition") == "dirichlet" and run["K"] * run["b"] > n_train:
            problems.append(f"train.b: K={run['K']} Dirichlet shards of at least b={run['b']} examples need "
                            f"K*b = {run['K'] * run['b']} > subset.n_train={n_train} in {where}; lower train.b or K, "
                            "or raise subset.n_train")
    return sorted(set(problems + _figure_problems(config)))


def _partition_momentum_problems(config: dict) -> list[str]:
    """The partition and momentum keys of `train`, then of each setting's train section that sets some (with
    `train`'s for the rest), before any run is expanded from them."""
    def check(run: dict, where: str) -> list[str]:
        return specs.partition_momentum_problems(*(run.get(k, specs.run_default(k)) for k in grid.OPTIONAL_KEYS),
                                                 where=where)

    problems = check(config["train"], "train")
    if problems:
        return problems
    for name, setting in config["settings"].items():
        if set(setting.get("train", {})) & set(grid.OPTIONAL_KEYS):
            problems += check(grid.setting_defaults(config, name), f"settings.{name}.train")
    return problems


def _figure_problems(config: dict) -> list[str]:
    """Figure keys that name settings: Fig 1's setting, and the list that numbers the sweep figures."""
    fig, experiments = config["figures"], config["experiments"]
    problems = []
    shown = experiments.get(fig["experiment"], {}).get("settings", [])
    if shown and fig["fig1_setting"] not in shown:
        problems.append(f"figures.fig1_setting: '{fig['fig1_setting']}' is not a setting of experiment "
                        f"'{fig['experiment']}'; allowed: one of {shown}")
    unnumbered = [f"{s} ({exp})" for exp in SWEEPS for s in experiments.get(exp, {}).get("settings", [])
                  if s not in fig["sweep_settings"]]
    if unnumbered:
        problems.append(f"figures.sweep_settings: {', '.join(unnumbered)} has no figure number (listed: "
                        f"{fig['sweep_settings']}); allowed: a list of every setting of {', '.join(SWEEPS)}")
    return problems


N_CLASSES = {"mnist": 10, "cifar10": 10, "sst2": 2}


def _device_problems(config: dict) -> list[str]:
    if config.get("device") != "cuda" or not config.get("device_check", True):
        return []
    import torch  # start-up: the workflow imports this module while it parses; torch costs ~6 s (-X importtime)

    if torch.cuda.is_available():
        return []
    return ["device: 'cuda' but this machine sees no GPU (torch.cuda.is_available() is False); allowed: "
            "auto | cpu | cuda. Use cpu/auto here, or set device_check: false when submitting to GPU nodes "
            "from a login node without one"]


def _rank_problems(config: dict) -> list[str]:
    """Subspace dimensions beyond what K workers and W rounds of gaps can span: rank(G) = (K-1) W."""
    problems = []
    runs = grid.expand_runs(config, strict=False)
    if runs:
        top = max((r["K"] - 1) * r["window"] for r in runs)
        m_list = config["geometry"].get("m_list", specs.config_default("geometry", "m_list"))
        too_big = [m for m in m_list if m > top]
        if too_big:
            problems.append(f"geometry.m_list: {too_big} exceed the largest gap rank (K-1)*W = {top} of any run; "
                            f"allowed: 1..{top} (larger m cannot be evaluated)")
    for setting in config["experiments"].get("main", {}).get("settings", []):
        r = grid.main_runs(config, setting)[0]  # the restricted runs branch from its seeds
        params = specs.restricted_params(config, setting)
        spec = specs.RestrictSpec.from_config(params, "gapdom", N_CLASSES[config["settings"][setting]["dataset"]])
        rank = (r["K"] - 1) * spec.window
        if {"gapdom", "gapbulk"} & set(params["modes"]) and spec.gap_dim > rank:
            problems.append(f"restricted.gap_m: gap-Dom/Bulk of {setting} need m={spec.gap_dim} directions but "
                            f"K={r['K']} workers x gap_window={spec.window} probe rounds span only {rank}; "
                            f"allowed: gap_m <= (K-1)*gap_window (raise gap_window or lower gap_m)")
        if set(specs.GRADHIST_MODES) & set(params["modes"]) and spec.gap_dim > r["K"] * spec.window:
            problems.append(f"restricted.gap_m: gradient-history Dom/Bulk of {setting} need m={spec.gap_dim} "
                            f"directions but K={r['K']} workers x gap_window={spec.window} probe steps give only "
                            f"{r['K'] * spec.window} gradients; allowed: gap_m <= K*gap_window")
    return problems
