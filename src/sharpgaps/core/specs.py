"""What each pipeline step computes, with its defaults, built from the validated config.

One home per default: a key the config leaves unset takes its spec dataclass's default here, and
each spec is built from its config section by one ``from_config``, which the workflow (paths,
tags) and the jobs both call. ``SECTIONS`` and ``CONFIG_NAMES`` say which config key fills which
spec field; tests/test_specs.py holds the schema's stated defaults to these. The training run's
spec (``RunSpec``, below) comes from the run grid (``RunSpec.from_run``).

Torch-free: the workflow imports it while it parses.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np


def exact_float(x: float) -> str:
    """A float for a path that reads back exactly: float(exact_float(x)) == x.

    The short %g form where it is exact (0.05, 1e-05: the paths of every existing run), else the
    shortest exact repr (0.0123456789, where %g would round to 0.0123457 and train another lr)."""
    short = format(float(x), "g")
    return short if float(short) == float(x) else repr(float(x))


def exact_int(x: int) -> str:
    """An integer for a path; refuses a non-integral value instead of writing one the run id cannot parse."""
    if int(x) != x:
        raise ValueError(f"{x!r} is not an integer")
    return str(int(x))


def checkpoint_rounds(rounds: int, window: int, checkpoints: dict) -> list[int]:
    """Explicit rounds, or ``count`` rounds from ``window`` (a full gap window) to the last round.

    Log spacing puts more checkpoints early, where the geometry changes fastest.
    """
    if checkpoints.get("rounds"):
        return sorted(set(int(r) for r in checkpoints["rounds"]))
    count = checkpoints.get("count", 20)
    lo = min(window, rounds)
    if checkpoints.get("spacing", "log") == "log":
        pts = np.geomspace(lo, rounds, count)
    else:
        pts = np.linspace(lo, rounds, count)
    return sorted(set(int(round(p)) for p in pts) | {rounds})


# ARPACK working precision of every top-k solve: 4x cheaper Lanczos bookkeeping than float64, eigenvalues
# within ~1e-6 of it (hessian.top_eigenpairs, docs/BENCHMARKS.md)
LANCZOS_DTYPE = "float32"
MODES = ("none", "dom", "bulk", "gapdom", "gapbulk")  # the default mode list
BRANCH_SCOPES = ("setting", "seed")
FALLBACK = "fallback:"  # how a branch rule that never held starts its reason (tables, figures, RESULTS)
# random-Dom / random-Bulk: a seeded random subspace of Dom's dimension, refreshed like the others
RANDOM_MODES = ("randdom", "randbulk")
# Dom/Bulk on the best free estimator of the estimator comparison (gradient history, docs/FIDELITY.md): the top
# directions of the probe rounds' last K*W minibatch gradients, beside gap-Dom/Bulk on the same probe
GRADHIST_MODES = ("graddom", "gradbulk")
ALL_MODES = MODES + RANDOM_MODES + GRADHIST_MODES


PARTITIONS = ("iid", "dirichlet")  # train.partition: which examples each worker draws from
MOMENTUM_BUFFERS = ("average", "keep", "reset")  # train.momentum_buffers: a worker's buffer at averaging
# The keys of a run beyond the paper's plain IID SGD: each pair enters a run's id, spec record and resume digest
# only when its first key differs from its default, so every run without them keeps its path and bytes.
OPTIONAL_RUN_KEYS = (("partition", "alpha"), ("momentum", "momentum_buffers"))


def partition_momentum_problems(partition, alpha, momentum, momentum_buffers, where: str = "train") -> list[str]:
    """What is wrong with a run's partition and momentum keys (empty if nothing), each naming its config key
    under ``where`` and the fix."""
    problems = []
    if partition not in PARTITIONS:
        problems.append(f"{where}.partition: '{partition}'; allowed: one of {PARTITIONS}")
    elif partition == "dirichlet" and not (isinstance(alpha, (int, float)) and alpha > 0):
        problems.append(f"{where}.alpha: partition dirichlet needs the concentration alpha > 0, got {alpha!r} "
                        f"(e.g. {where}.alpha: 0.5; large alpha = near-IID shards, small = label skew)")
    elif partition == "iid" and alpha is not None:
        problems.append(f"{where}.alpha: {alpha!r} is set but {where}.partition is iid; set {where}.partition: "
                        "dirichlet or remove alpha")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        problems.append(f"{where}.momentum: {momentum!r}; allowed: 0 <= momentum < 1 (0 = plain SGD)")
    if momentum_buffers not in MOMENTUM_BUFFERS:
        problems.append(f"{where}.momentum_buffers: '{momentum_buffers}'; allowed: one of {MOMENTUM_BUFFERS}")
    return problems


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's numbers (given the model, data and loss)."""

    K: int
    tau: int
    b: int
    lr: float
    rounds: int
    window: int
    seed: int
    checkpoints: tuple[int, ...]
    # iid: every worker draws from all examples; dirichlet: label-skewed shards, class shares ~ Dir(alpha)
    partition: str = "iid"
    alpha: float | None = None
    momentum: float = 0.0  # heavy-ball coefficient of each worker's local steps (0 = plain SGD, the paper's)
    # Buffers at averaging, like the parameters: tau = 1 is then momentum SGD on K*b examples (docs/FIDELITY.md)
    momentum_buffers: str = "average"

    def __post_init__(self):
        for key in ("K", "tau", "b", "rounds", "window"):
            if getattr(self, key) < 1:
                raise ValueError(f"RunSpec.{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"RunSpec.lr must be > 0, got {self.lr}")
        bad = [c for c in self.checkpoints if not 1 <= c <= self.rounds]
        if bad:
            raise ValueError(f"RunSpec.checkpoints {bad} outside rounds 1..{self.rounds}")
        problems = partition_momentum_problems(self.partition, self.alpha, self.momentum, self.momentum_buffers)
        if problems:
            raise ValueError("; ".join(problems))
        # one spec per set of numbers: floats as the run id reads them back; no buffer policy without momentum
        object.__setattr__(self, "momentum", float(self.momentum))
        if self.alpha is not None:
            object.__setattr__(self, "alpha", float(self.alpha))
        if self.momentum == run_default("momentum"):
            object.__setattr__(self, "momentum_buffers", run_default("momentum_buffers"))

    @classmethod
    def from_run(cls, run: dict) -> "RunSpec":
        """The spec of a workflow run description (rounds = local_steps // tau, checkpoints expanded)."""
        rounds = run["local_steps"] // run["tau"]
        optional = {k: run[k] for pair in OPTIONAL_RUN_KEYS for k in pair if k in run}
        return cls(K=run["K"], tau=run["tau"], b=run["b"], lr=run["lr"], rounds=rounds, window=run["window"],
                   seed=run["seed"], checkpoints=tuple(checkpoint_rounds(rounds, run["window"], run["checkpoints"])),
                   **optional)

    def as_dict(self) -> dict:
        """The spec as recorded (checkpoints, run.json, the resume digest); OPTIONAL_RUN_KEYS at their defaults
        are left out, so a plain IID SGD run records what it always did."""
        d = asdict(self)
        d["checkpoints"] = list(self.checkpoints)
        for lead, *rest in OPTIONAL_RUN_KEYS:
            if d[lead] == run_default(lead):
                for key in (lead, *rest):
                    del d[key]
        return d


def run_default(key: str):
    """RunSpec's default of an optional run key (OPTIONAL_RUN_KEYS)."""
    return next(f.default for f in fields(RunSpec) if f.name == key)


@dataclass(frozen=True)
class GeometrySpec:
    """Per-checkpoint Hessian and gap-subspace metrics (sharpgaps.curvature.geometry); config section `geometry`."""

    k: int  # Hessian eigenpairs defining the dominant subspace (= classes)
    extra: int = 0  # further eigenvalues, for the spectrum figure only
    tol: float = 1e-3
    m_list: tuple[int, ...] = (1, 2, 4, 8, 16)
    m_rank: bool = True  # also evaluate m = rank(G) = (K-1) W
    hessian_examples: int | None = None  # None: the whole training subset
    chunk_size: int | None = None
    # g over the whole training subset needs no second-order graph: chunks bound its memory (one chunk of
    # activations, 6.2 GB -> 0.7 GB for the transformer) and run faster; None = all examples at once.
    grad_chunk_size: int | None = 256
    random_draws: int = 8
    cos_top: int = 20  # gap directions in the squared-cosine matrix
    warm_start: bool = True
    lanczos_dtype: str = LANCZOS_DTYPE
    seed: int = 0

    @classmethod
    def from_config(cls, params: dict, k: int) -> "GeometrySpec":
        """``params``: a setting's `geometry` section as the workflow passes it (geometry_params)."""
        return _build(cls, "geometry", params, k=k)

    def objective_options(self) -> dict:
        """The objective's Hessian sample and chunking (sharpgaps.engine.objective.Objective's fields)."""
        return {"hessian_examples": self.hessian_examples, "chunk_size": self.chunk_size,
                "grad_chunk_size": self.grad_chunk_size}

    def tag(self) -> str:
        """The geometry table's path tag: the parameters that change its rows the most."""
        return f"H{self.hessian_examples or 'all'}_tol{exact_float(self.tol)}_x{self.extra}"


@dataclass(frozen=True)
class BranchSpec:
    """Which restricted runs branch from a setting's `main` run, and where; config section `restricted`."""

    branch_at: float = 0.1  # fraction of the parent's rounds, snapped to its nearest checkpoint (criterion off)
    # Branch once the gradient is aligned with the top-k subspace (Song et al. switch then): the first
    # checkpoint ending `branch_consecutive` checkpoints in a row with chi_k >= branch_chi_k; None: branch_at.
    branch_chi_k: float | None = 0.9
    branch_consecutive: int = 2
    # Whose chi_k the rule reads: "setting" = the mean over the parent configuration's seeds, so every seed
    # branches at one round and their curves share a starting point; "seed" = each seed its own.
    branch_scope: str = "setting"
    modes: tuple[str, ...] = MODES

    def __post_init__(self):
        if self.branch_scope not in BRANCH_SCOPES:
            raise ValueError(f"restricted.branch_scope is '{self.branch_scope}'; use one of {BRANCH_SCOPES}")

    @classmethod
    def from_config(cls, params: dict) -> "BranchSpec":
        return _build(cls, "restricted", params)

    def label(self) -> str:
        """The rule in a path tag: chi0.9x2 (each seed's chi_k), chi0.9x2mean (the seeds' mean) or at0.25."""
        if self.branch_chi_k is None:
            return f"at{exact_float(self.branch_at)}"
        scope = "mean" if self.branch_scope == "setting" else ""
        return f"chi{exact_float(self.branch_chi_k)}x{self.branch_consecutive}{scope}"

    def choose(self, checkpoints: list[int], rounds: int, chi_k: dict[int, float]) -> tuple[int, str]:
        """(branch round, why) among the parent's checkpoint rounds; ``chi_k``: round -> chi_k of the parent
        (scope "setting": the mean over its seeds). Why starts with FALLBACK when the criterion never held."""
        checkpoints = sorted(checkpoints)
        if self.branch_chi_k is None:
            return min(checkpoints, key=lambda c: abs(c - self.branch_at * rounds)), f"fraction {self.branch_at}"
        missing = [c for c in checkpoints if c not in chi_k]
        if missing:
            raise ValueError(f"the parent's geometry table has no chi_k at checkpoint rounds {missing}")
        streak = 0  # checkpoints in a row at or above the threshold
        for c in checkpoints:
            streak = streak + 1 if chi_k[c] >= self.branch_chi_k else 0
            if streak >= self.branch_consecutive:
                return c, f"chi_k >= {self.branch_chi_k} at {self.branch_consecutive} checkpoints in a row"
        # closest to the criterion: the most aligned checkpoint (the earliest of ties), not the last one, where
        # a trained run has little loss left to lose over the horizon
        best = max(checkpoints, key=lambda c: (chi_k[c], -c))
        return best, (f"{FALLBACK} chi_k never >= {self.branch_chi_k} at {self.branch_consecutive} "
                      f"checkpoints in a row; the checkpoint of highest chi_k ({chi_k[best]:.3f})")


@dataclass(frozen=True)
class RestrictSpec:
    """One Dom/Bulk- or gap-restricted run (sharpgaps.studies.restricted); config section `restricted`."""

    mode: str
    rounds: int = 200  # restricted rounds after the branch point
    refresh: int = 10
    eval_every: int = 10
    k: int = 10  # Hessian eigenvectors (classes)
    m: int | None = None  # gap (or gradient-history) directions (None: k)
    window: int = 4  # probe rounds per gap-subspace refresh
    tol: float = 1e-3
    hessian_examples: int | None = None
    lanczos_dtype: str = LANCZOS_DTYPE

    def __post_init__(self):
        if self.mode not in ALL_MODES:
            raise ValueError(f"unknown restriction mode '{self.mode}'; known: {ALL_MODES}")

    @property
    def gap_dim(self) -> int:
        """Gap directions spanning the gap subspace."""
        return self.m or self.k

    @classmethod
    def from_config(cls, params: dict, mode: str, k: int) -> "RestrictSpec":
        """``params``: a setting's `restricted` section (restricted_params); keys of BranchSpec are skipped."""
        return _build(cls, "restricted", params, mode=mode, k=k)


# The experiments whose runs the estimator stage measures (those a config has): `main` for Fig X3, and the
# heterogeneity family, whose cells compare the best free estimator.
ESTIMATOR_EXPERIMENTS = ("main", "heterogeneity")


@dataclass(frozen=True)
class EstimatorSpec:
    """Cheap estimators of the dominant subspace against the Hessian's (sharpgaps.studies.estimators); config section
    `estimators`. The Hessian examples, k and the eigenvectors are the geometry job's."""

    n: int | None = None  # vectors per estimator (None: K*W, the gap matrix's count)
    m_list: tuple[int, ...] = (1, 2, 4, 8, 16)  # plus m = k always
    krylov_hvps: tuple[int, ...] = (10, 20, 40)  # HVP budgets j of the block Krylov estimators
    block: int | None = None  # Krylov block size (None: k); capped by the smallest budget
    noise_b: int | None = None  # minibatch size of the noise-PCA gradients (None: the run's b)
    last_checkpoints: int | None = None  # evaluate only the last this many checkpoints (None: all)
    # Format-1 checkpoints (no average history) replay from the previous checkpoint: skip the update and gradient
    # histories where that replay would exceed this many rounds (None: never skip)
    max_replay_rounds: int | None = None

    @classmethod
    def from_config(cls, params: dict) -> "EstimatorSpec":
        return _build(cls, "estimators", params)

    def krylov_block(self, k: int) -> int:
        """Vectors per Krylov block: `block` (default k), at most the smallest budget."""
        return min(self.block or k, min(self.krylov_hvps))


@dataclass(frozen=True)
class TheorySpec:
    """The quadratic-model check (sharpgaps.studies.theory); config section `theory`."""

    eigenvalues: tuple[float, ...] = (10.0, 5.0, 2.0, 1.0, 0.5, 0.1)  # spectrum of H
    K: int = 8
    b: int = 4
    lr: float = 0.05
    taus: tuple[int, ...] = (1, 2, 4, 8, 16)
    rounds: int = 2000  # Monte-Carlo rounds per tau
    pool: int = 50_000  # noise vectors in the sampling pool
    seed: int = 0

    @classmethod
    def from_config(cls, params: dict) -> "TheorySpec":
        return _build(cls, "theory", params)


@dataclass(frozen=True)
class MechanismSpec:
    """The per-direction noise x curvature check (sharpgaps.studies.mechanism); config section `mechanism`."""

    k: int  # Hessian eigenvectors of the dominant subspace (= classes); all k + geometry.extra are tested
    experiments: tuple[str, ...] = ("main", "tau_ablation", "heterogeneity")  # whose runs (those the config has)
    random_directions: int = 4  # seeded random unit directions orthogonal to the k + extra eigenvectors
    examples: int | None = None  # training examples in c_j (None: the whole subset; fewer: unbiased subsample)
    chunk_size: int = 256  # examples per vmapped per-example-gradient chunk (memory ~ chunk x d)
    seed: int = 0

    @classmethod
    def from_config(cls, params: dict, k: int) -> "MechanismSpec":
        return _build(cls, "mechanism", params, k=k)


# config section -> the specs its keys fill; config keys named unlike their field
SECTIONS = {"geometry": (GeometrySpec,), "restricted": (BranchSpec, RestrictSpec), "theory": (TheorySpec,),
            "estimators": (EstimatorSpec,), "mechanism": (MechanismSpec,)}
CONFIG_NAMES = {"restricted": {"gap_m": "m", "gap_window": "window"}}

# The keys whose defaults the restricted path tag (a digest of restricted_params) has always covered.
# A key added since (lanczos_dtype) enters it only when a config sets it, so existing outputs keep their paths.
RESTRICTED_TAGGED = ("branch_at", "branch_chi_k", "branch_consecutive", "branch_scope", "rounds", "modes", "refresh",
                     "eval_every", "hessian_examples", "tol", "gap_m", "gap_window")


def spec_field(section: str, key: str) -> tuple[type, str]:
    """The spec class and field that config key ``section.key`` fills."""
    name = CONFIG_NAMES.get(section, {}).get(key, key)
    for cls in SECTIONS[section]:
        if name in {f.name for f in fields(cls)}:
            return cls, name
    raise KeyError(f"{section}.{key}: no spec field takes this config key")


def config_default(section: str, key: str):
    """The value a config that leaves ``section.key`` unset gets."""
    cls, name = spec_field(section, key)
    default = next(f.default for f in fields(cls) if f.name == name)
    if default is MISSING:
        raise KeyError(f"{section}.{key}: {cls.__name__}.{name} has no default")
    return default


def _build(cls, section: str, params: dict, **fixed):
    """``cls`` from the config keys of ``params`` it owns (renamed per CONFIG_NAMES; lists as tuples)."""
    own = {}
    for key, value in params.items():
        owner, name = spec_field(section, key)
        if owner is cls:
            own[name] = tuple(value) if isinstance(value, list) else value
    return cls(**fixed, **own)


def geometry_params(config: dict, setting: str) -> dict:
    """The `geometry` section overridden by the setting's own; unset keys stay unset (defaults: GeometrySpec)."""
    return {**config["geometry"], **config["settings"][setting].get("geometry", {})}


def restricted_params(config: dict, setting: str) -> dict:
    """The `restricted` section overridden by the setting's own, with the RESTRICTED_TAGGED defaults filled in."""
    defaults = {key: config_default("restricted", key) for key in RESTRICTED_TAGGED}
    return {**defaults, **config["restricted"], **config["settings"][setting].get("restricted", {})}


def estimator_params(config: dict, setting: str) -> dict:
    """The `estimators` section overridden by the setting's own, as set (unset keys stay unset: defaults are
    EstimatorSpec's)."""
    return {**(config.get("estimators") or {}), **config["settings"][setting].get("estimators", {})}


def mechanism_params(config: dict, setting: str) -> dict:
    """The `mechanism` section overridden by the setting's own, without `experiments` (which runs are measured
    is the workflow's business, not a run's numbers: changing it renames no output)."""
    params = {**config.get("mechanism", {}), **config["settings"][setting].get("mechanism", {})}
    params.pop("experiments", None)
    return params


# The architecture keys each model accepts (settings.<name>.arch); their defaults are the constructors'.
ARCH_KEYS = {"fc_tanh": ("widths",), "cnn_relu": ("channels",),
             "transformer": ("dim", "heads", "layers", "ff", "emb_mult")}


def arch_problems(name: str, arch: dict) -> list[str]:
    """What is wrong with the architecture overrides ``arch`` for model ``name`` (empty if nothing)."""
    if name not in ARCH_KEYS:
        return [f"unknown model '{name}'; known: {tuple(ARCH_KEYS)}"]
    problems = [f"unknown key '{k}' for model '{name}' (known: {', '.join(ARCH_KEYS[name])})"
                for k in arch if k not in ARCH_KEYS[name]]
    mult = arch.get("emb_mult", 1.0)
    if not (isinstance(mult, (int, float)) and mult > 0):
        problems.append(f"emb_mult must be a positive number, got {mult!r}")
    return problems
