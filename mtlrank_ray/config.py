"""The run configuration: YAML files in `tune_configs/`, checked strictly.

Every section and key is optional and falls back to the defaults below (the
recommended settings; `tune_configs/seed.yaml` holds the notebook's). An
unknown key, a wrong type or an out-of-range value is an error that names the
key and the file, so a typo never silently runs the defaults.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class GenesConfig:
    """Which genes are modelled and how they are clustered (notebook steps 1-2)."""

    n_genes: int = field(default=500, metadata=_POSITIVE)
    min_cells: int = field(default=4000, metadata=_NON_NEGATIVE)
    min_cells_by_tissue: dict[str, int] = field(
        default_factory=lambda: {"Liver": 1000},
        metadata=_check(lambda v: min(v.values(), default=0) >= 0, "counts of at least 0"))
    n_clusters: int = field(default=20, metadata=_POSITIVE)
    seed: int = 1000

    def min_cells_for(self, tissue: str) -> int:
        return self.min_cells_by_tissue.get(tissue, self.min_cells)


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
        metadata=_check(lambda v: min(v) >= 0, "a list of numbers of at least 0"))
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


@dataclass(frozen=True)
class AshaConfig:
    enabled: bool = True
    grace_period: int = field(default=2, metadata=_POSITIVE)
    reduction_factor: int = field(default=2, metadata=_check(lambda v: v >= 2, "at least 2"))


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = field(default=1.0, metadata=_POSITIVE)
    gpu: float = field(default=0.0, metadata=_NON_NEGATIVE)
    max_concurrent_trials: int | None = field(default=None, metadata=_POSITIVE)


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


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML config; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file, "
                          "e.g. tune_configs/default.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    return config_from_dict({} if raw is None else raw, source=str(path))


def config_from_dict(raw: Any, source: str = "<config>") -> Config:
    return _build(Config, raw, prefix="", source=source)


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
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {key} must be {_describe(hint)}, got {value!r} "
                      f"({type(value).__name__})")


def _describe(hint: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, hint.__name__)
