"""The run configuration: YAML files in `tune_configs/`, checked strictly.

Every section and key is optional and falls back to the defaults below (the
recommended settings; `tune_configs/seed.yaml` holds the notebook's). An
unknown key, a wrong type or an out-of-range value is an error that names the
key and the file, so a typo never silently runs the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError


def _check(predicate, requirement: str) -> dict:
    return {"check": (predicate, requirement)}


_POSITIVE = _check(lambda v: v > 0, "greater than 0")
_NON_NEGATIVE = _check(lambda v: v >= 0, "at least 0")
_FRACTION = _check(lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")


@dataclass(frozen=True)
class DataConfig:
    """How input files are read (see README, "Data layout")."""

    format: Literal["auto", "seed", "h5ad"] = "auto"
    h5ad_glob: str = "**/*.h5ad"  # h5ad: which files under data/h5ad/<Tissue>/ are read
    expression_layer: str | None = None  # h5ad: layer holding expression; None reads X
    expression_is_log: bool = False  # h5ad: True when expression is already log-scaled
    min_barcode_overlap: float = field(default=0.5, metadata=_FRACTION)
    min_tfs: int = field(default=10, metadata=_POSITIVE)  # fewer TFs found: the names disagree
    # What the networks predict for each selected gene (README, "Targets"): its RNA
    # velocity (the seed's), its smoothed unspliced or spliced abundance (scVelo's Mu, Ms;
    # h5ad only) or its expression.
    target: Literal["velocity", "unspliced", "spliced", "expression"] = "velocity"
    # The TFs' input: their expression (the seed's) or their smoothed spliced abundance
    # (scVelo's Ms; h5ad only).
    tf_input: Literal["expression", "smoothed"] = "expression"


@dataclass(frozen=True)
class GenesConfig:
    """Which genes are modelled and how they are clustered (notebook steps 1-2)."""

    n_genes: int = field(default=500, metadata=_POSITIVE)
    min_cells: int = field(default=4000, metadata=_NON_NEGATIVE)
    min_cells_by_tissue: dict[str, int] = field(
        default_factory=lambda: {"Liver": 1000},
        metadata=_check(lambda v: min(v.values(), default=0) >= 0, "counts of at least 0"))
    # The count is capped at this fraction of the tissue's cells, so that the defaults fit
    # a 2,000-cell sample as well as an atlas (the seed's 4000 holds from 8,000 cells up).
    min_cell_fraction: float = field(default=0.5, metadata=_check(lambda v: 0 < v <= 1,
                                                                   "above 0 and at most 1"))
    n_clusters: int = field(default=20, metadata=_POSITIVE)
    seed: int = 1000

    def min_cells_setting(self, tissue: str) -> int:
        return self.min_cells_by_tissue.get(tissue, self.min_cells)

    def min_cells_for(self, tissue: str, n_cells: int) -> int:
        """A gene of `tissue` (of `n_cells` cells) is a candidate with velocity in more
        than this many cells."""
        return min(self.min_cells_setting(tissue), int(self.min_cell_fraction * n_cells))


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = field(default=10, metadata=_POSITIVE)
    batch_size: int = field(default=256, metadata=_POSITIVE)
    learning_rate: float = field(default=0.01, metadata=_POSITIVE)
    standardize: Literal["train", "per_split"] = "train"
    l1: float = field(default=0.0, metadata=_NON_NEGATIVE)


@dataclass(frozen=True)
class SearchConfig:
    lambdas: list[float] = field(
        default_factory=lambda: [0.0, 0.001, 0.01, 0.1],
        metadata=_check(lambda v: min(v) >= 0 and len(set(v)) == len(v),
                        "a list of numbers of at least 0, without repeats"))
    replicates: int = field(default=3, metadata=_POSITIVE)
    # Per-gene baselines fitted beside the networks on the same cells (README, "Baselines").
    baselines: list[Literal["lasso", "grnboost2"]] = field(
        default_factory=lambda: ["lasso", "grnboost2"],
        metadata=_check(lambda v: len(set(v)) == len(v), "a list without repeats"))
    lasso_alphas: list[float] = field(  # the per-gene lasso baseline's grid (standardized data)
        default_factory=lambda: [0.1, 0.03, 0.01, 0.003, 0.001],
        metadata=_check(lambda v: min(v) > 0, "a list of numbers greater than 0"))
    test_fraction: float = field(default=0.1, metadata=_FRACTION)
    val_fraction: float = field(default=0.1, metadata=_FRACTION)
    seed: int = 0
    # The training settings searched beside λ (README, "Search space"): key -> {grid: [...]},
    # {choice: [...]}, {uniform: [low, high]} or {loguniform: [low, high]}. A fixed value
    # there sets training.<key>; lambda: {grid: [...]} sets `lambdas`.
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = field(default=1, metadata=_POSITIVE)  # draws of the sampled keys
    searcher: Literal["optuna"] | None = None  # None: the grid and seeded draws, fixed up front


@dataclass(frozen=True)
class AshaConfig:
    enabled: bool = True
    grace_period: int = field(default=2, metadata=_POSITIVE)
    reduction_factor: int = field(default=2, metadata=_check(lambda v: v >= 2, "at least 2"))


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = field(default=1.0, metadata=_POSITIVE)
    gpu: float = field(default=0.0, metadata=_NON_NEGATIVE)
    # A trial that asks for a GPU fails at once unless TensorFlow sees one on its node;
    # false only where nodes advertise GPUs they lack (the local cluster's config).
    require_gpu: bool = True
    max_concurrent_trials: int | None = field(default=None, metadata=_POSITIVE)
    # TensorFlow's deterministic kernels (tf.config.experimental.enable_op_determinism):
    # a GPU's sums may otherwise run in a different order each time; slower where it acts.
    deterministic_ops: bool = False


@dataclass(frozen=True)
class RunSettings:
    """Where the sweep keeps its store and trials, and how it survives failures."""
    # Storage every node sees (s3://bucket/prefix on a cluster): a run folder RUN keeps
    # its aligned store and Tune's trials in <storage_path>/<RUN's name>/. None: in RUN.
    storage_path: str | None = None
    max_failures: int = field(default=2, metadata=_NON_NEGATIVE)  # retries of a crashed trial
    # A trial saves its whole state (weights, best weights, Adam's moments: ~4x the
    # model) when either interval has passed since its last save; null turns one off.
    # A crashed trial goes on from its last save. On a GPU an epoch can take about as
    # long as writing its state, so the default saves by time, not by epoch.
    checkpoint_every_epochs: int | None = field(default=None, metadata=_POSITIVE)
    checkpoint_every_s: float | None = field(default=300.0, metadata=_POSITIVE)

    def root(self, out: str | Path) -> str:
        """Where the run folder `out` keeps its store and Tune's trials."""
        if self.storage_path:
            return f"{self.storage_path.rstrip('/')}/{Path(out).resolve().name}"
        return str(Path(out).resolve())

    def store(self, out: str | Path) -> str:
        return f"{self.root(out)}/store"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    genes: GenesConfig = field(default_factory=GenesConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    asha: AshaConfig = field(default_factory=AshaConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    run: RunSettings = field(default_factory=RunSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainingConfig))
INTEGER_KEYS = frozenset(k for k, hint in typing.get_type_hints(TrainingConfig).items() if hint is int)
DOMAINS = {"grid": "a list", "choice": "a list", "uniform": "[low, high]",
           "loguniform": "[low, high]"}
SAMPLED = ("choice", "uniform", "loguniform")
CHECKOUT = Path(__file__).resolve().parents[1]  # where tune_configs/ is, in a checkout


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML config; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        nearby = sorted(p.name for p in path.parent.glob("*.y*ml")) if path.parent.is_dir() else []
        stems = {Path(name).stem: name for name in nearby}  # by stem: ".yaml" alone is no likeness
        close = difflib.get_close_matches(path.stem, list(stems), n=1)
        shipped = CHECKOUT / path  # tune_configs/x.yaml given from another folder (demo/)
        hint = (f"did you mean {os.path.relpath(shipped)}? (a relative path is read from the "
                "current folder)" if not path.is_absolute() and shipped.is_file()
                else f"did you mean {path.parent / stems[close[0]]}?" if close
                else f"YAML files there: {', '.join(nearby)}" if nearby
                else "pass an existing YAML file (the checkout's tune_configs/ holds examples)")
        raise ConfigError(f"config file {path} does not exist; {hint}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    return config_from_dict({} if raw is None else raw, source=str(path))


def config_from_dict(raw: Any, source: str = "<config>") -> Config:
    config = _build(Config, raw, prefix="", source=source)
    given_lambdas = isinstance(raw.get("search"), dict) and "lambdas" in raw["search"]
    return _resolve_space(config, given_lambdas, source)


def _resolve_space(config: Config, given_lambdas: bool, source: str) -> Config:
    """Check `search.space` and fold its fixed values into `training` and its λ grid
    into `search.lambdas`, so each setting has one place."""
    search = config.search
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    hints = typing.get_type_hints(TrainingConfig)
    fixed, domains, lambdas = {}, {}, search.lambdas
    for key, spec in search.space.items():
        where = f"search.space.{key}"
        if key != "lambda" and key not in fields:
            raise ConfigError(f"{source}: unknown key '{where}'; searchable keys: lambda, "
                              f"{', '.join(TRAINING_KEYS)}")
        if key == "lambda" and given_lambdas:
            raise ConfigError(f"{source}: λ is given twice, in search.lambdas and {where}; keep one")
        hint, check = ((float, _NON_NEGATIVE["check"]) if key == "lambda"
                       else (hints[key], fields[key].metadata.get("check")))

        def value(v, name):
            v = _coerce(v, hint, name, source)
            if check and not check[0](v):
                raise ConfigError(f"{source}: {name} must be {check[1]}, got {v!r}")
            return v

        if isinstance(spec, list):
            raise ConfigError(f"{source}: {where} is a list; for several values write "
                              "{grid: [...]} (every value) or {choice: [...]} (drawn)")
        if not isinstance(spec, dict):
            fixed[key] = value(spec, where)
            continue
        if len(spec) != 1 or next(iter(spec)) not in DOMAINS:
            raise ConfigError(f"{source}: {where} must be a value or one domain: "
                              + ", ".join(f"{{{kind}: {form}}}" for kind, form in DOMAINS.items())
                              + f"; got {spec!r}")
        (kind, values), name = next(iter(spec.items())), f"{where}.{next(iter(spec))}"
        if key == "lambda" and kind != "grid":
            raise ConfigError(f"{source}: {where} must be a value or {{grid: [...]}}: every "
                              "setting is trained at each λ of the grid, λ = 0 its baseline")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: {name} must be {DOMAINS[kind]}, got {values!r}")
        if kind in ("uniform", "loguniform") and hint not in (int, float):
            raise ConfigError(f"{source}: {name}: {key} is not a number; write {{choice: [...]}} "
                              "or {grid: [...]}")
        values = [value(v, f"{name}[{i}]") for i, v in enumerate(values)]
        if kind in ("grid", "choice") and len(set(values)) < len(values):
            raise ConfigError(f"{source}: {name} lists a value twice: {values!r}")
        if kind in ("uniform", "loguniform"):
            if len(values) != 2 or not values[0] < values[1]:
                raise ConfigError(f"{source}: {name} must be [low, high] with low < high, "
                                  f"got {spec[kind]!r}")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"{source}: {name} must start above 0, got {values[0]!r}")
        domains[key] = {kind: values}
    if "lambda" in fixed or "lambda" in domains:
        lambdas = [fixed.pop("lambda")] if "lambda" in fixed else domains.pop("lambda")["grid"]
    sampled = [key for key, spec in domains.items() if next(iter(spec)) in SAMPLED]
    if search.num_samples > 1 and not sampled:
        raise ConfigError(f"{source}: search.num_samples {search.num_samples} draws nothing: no "
                          "key of search.space is sampled (choice, uniform, loguniform); for "
                          "repeats, use search.replicates")
    if search.searcher == "optuna":
        gridded = [key for key in domains if key not in sampled]
        if not sampled or gridded:
            raise ConfigError(f"{source}: search.searcher optuna samples the training settings: "
                              + (f"write search.space.{gridded[0]} as {{choice: [...]}}" if gridded
                                 else "give search.space a choice, uniform or loguniform key")
                              + " (λ stays a grid)")
    size = math.prod(len(values) if kind == "choice"
                     else (values[1] - values[0] + 1 if key in INTEGER_KEYS else math.inf)
                     for key in sampled for kind, values in domains[key].items())
    if sampled and size < search.num_samples:
        raise ConfigError(f"{source}: search.num_samples {search.num_samples} is more than the "
                          f"{size} settings the sampled keys of search.space hold; lower it")
    return dataclasses.replace(
        config, training=dataclasses.replace(config.training, **fixed),
        search=dataclasses.replace(search, lambdas=lambdas, space=domains))


def _build(cls, raw: Any, prefix: str, source: str):
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping of keys to values, "
                          f"got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}'; known keys in "
                          f"{where}: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, prefix=key + ".", source=source)
            continue
        values[name] = _coerce(value, hint, key, source)
        check = fields[name].metadata.get("check")
        if check and values[name] is not None and not check[0](values[name]):
            raise ConfigError(f"{source}: {key} must be {check[1]}, got {value!r}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Return `value` as type `hint`, or raise an error naming key and file."""
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: {key} must be one of {', '.join(map(repr, args))}, "
                          f"got {value!r}")
    if origin is list:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{source}: {key} must be a non-empty list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return {_coerce(k, args[0], f"{key} (a key)", source):
                _coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and "e" in value.lower() and _is_number(value):  # YAML 1.1
        raise ConfigError(f"{source}: {key} must be a number, got the text {value!r}: YAML reads "
                          "1e-3 as text; write 0.001 or 1.0e-3")
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {key} must be {_describe(hint)}, got {value!r} "
                      f"({type(value).__name__})")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe(hint: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, hint.__name__)
