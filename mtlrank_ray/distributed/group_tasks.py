"""Work per (tissue, cluster, replicate) that runs beside the trials, as Ray tasks.

- The baselines of every group (`search.baselines`: the lasso, GRNBoost2),
  queued when the sweep starts, the cheap lasso first.
- The TF rankings of a group's chosen configuration, queued as soon as every trial of the
  group has finished (Tune tells `GroupsFinished`), so rankings are done while
  the cluster is up, not afterwards on the driver.

Tasks are submitted only onto CPUs the trials leave free: the driver checks
Ray's available CPUs between Tune's steps (trials waiting to start hold
theirs already), so a baseline rarely delays a trial (Ray counts free CPUs
over the whole cluster, not per node); whatever is still queued when the last
trial ends is submitted then. Each task reads its tissue's
expression from the node's one shared copy, and writes what it made to the
sweep's storage before it returns (`run_storage`), so a resumed sweep loads
the fits and rankings a killed driver never collected instead of redoing them.
This module imports no TensorFlow: the baselines' workers never load it; the
rankings' do, inside the task.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pandas as pd
import ray
from ray.tune import Callback

from ..analysis.baselines import BASELINES, LABEL, BaselineFit, baseline_name, fit_baseline
from ..analysis.results import choose
from ..config import Config, SearchConfig
from ..core.cluster_data import replicate_split
from ..core.trial import Trial
from ..data.store import put_file, read_file
from ..run_storage import (
    BASELINES_FOLDER,
    RANKINGS_FOLDER,
    baseline_location,
    model_location,
    put_frame,
    ranking_location,
    read_frame,
    stored_names,
)
from . import ray_data

log = logging.getLogger(__name__)

Group = tuple[str, int, int]  # (tissue, cluster, replicate)
POLL_S = 1.0  # how often free CPUs are looked up between Tune's steps


@ray.remote
def _baseline_task(tissue: ray_data.TissueBlocks, cluster: int, replicate: int, method: str,
                   search: SearchConfig, standardize: str, threads: int, location: str) -> BaselineFit:
    data = ray_data.cluster_data(tissue, cluster)
    split = replicate_split(search, len(data.expression), replicate)
    fit = fit_baseline(method, data, split, standardize, search, replicate, threads)
    put_file(location, fit.to_bytes())
    return fit


@ray.remote
def _ranking_task(tissue: ray_data.TissueBlocks, cluster: int, replicate: int, model: str,
                  search: SearchConfig, cpus: float, deterministic_ops: bool, location: str) -> pd.DataFrame:
    from ..analysis.rankings import group_rankings
    from ..core.trainer import configure_runtime
    from ..core.trial import load_model

    # TensorFlow as the trials have it: threads as the task's CPUs, deterministic kernels
    # if asked. Ray 2.60 hides no GPU from a task that asked for none
    # (set_visible_accelerator_ids, ray/_private/utils.py): on a GPU node TensorFlow
    # then grows its memory there as needed rather than taking it from the trials.
    configure_runtime(cpus, deterministic_ops)
    genes, weights = load_model(read_file(model))
    data = ray_data.cluster_data(tissue, cluster)
    if genes != data.genes:
        raise RuntimeError(f"{model} was trained on other genes than cluster {cluster}")
    rows = group_rankings(tissue.name, cluster, replicate, data, ray_data.tissue_tfs(tissue),
                          weights, search)
    put_frame(location, rows)
    return rows


class GroupTasks:
    """The driver's queue of baselines and rankings (see the module's docstring)."""

    def __init__(self, blocks: dict[str, ray_data.TissueBlocks], config: Config, experiment: str,
                 resumed: bool = False):
        """`resumed`: the sweep at `experiment` goes on, so the fits and rankings it has
        in storage are loaded rather than queued (a new sweep replaces them)."""
        self.blocks, self.config, self.experiment = blocks, config, experiment
        self.cpu = config.resources.cpu
        self.queue: deque = deque()
        self.pending: dict = {}  # ObjectRef -> (kind, group, Trial or baseline method)
        self.baselines: dict[tuple[Group, str], BaselineFit] = {}  # (group, method) -> fit
        self.rankings: dict[Trial, pd.DataFrame] = {}  # the group's chosen trial -> rows
        self.failed: list[str] = []
        self.submitted: list[tuple[str, Group, float]] = []  # (method or "rankings", group, time)
        self.kept: Counter = Counter()  # "baselines", "rankings": loaded from storage, not redone
        self.resumed = resumed
        self._stored_rankings = (stored_names(f"{experiment}/{RANKINGS_FOLDER}", ".parquet")
                                 if resumed else set())
        self._polled = 0.0

    def add_baselines(self, groups: list[Group]) -> None:
        """Queue every group's baselines, but load those already in storage."""
        stored = (stored_names(f"{self.experiment}/{BASELINES_FOLDER}", ".npz")
                  if self.resumed else set())
        wanted = [(group, method) for method in BASELINES if method in self.config.search.baselines
                  for group in groups]
        done = [(g, m) for g, m in wanted if baseline_name(*g, m) in stored]
        locations = [baseline_location(self.experiment, baseline_name(*g, m)) for g, m in done]
        with ThreadPoolExecutor(16) as pool:  # object storage serves parallel reads
            for key, location, payload in zip(done, locations, pool.map(read_file, locations)):
                self.baselines[key] = BaselineFit.from_bytes(payload, location)
        self.kept["baselines"] += len(done)
        self.queue.extend(("baseline", g, m) for g, m in wanted if (g, m) not in self.baselines)

    def baseline_counts(self) -> str:
        """What the baselines' tasks returned, e.g. '4 lasso and 4 GRNBoost2 fits'."""
        counts = Counter(method for _, method in self.baselines)
        return " and ".join(f"{counts[m]} {LABEL[m]}" for m in self.config.search.baselines) + " fits"

    def add_ranking(self, trial: Trial) -> None:
        task = ("rankings", (trial.tissue, trial.cluster, trial.replicate), trial)
        if trial in self.rankings or task in self.queue or task in self.pending.values():
            return
        if trial.name in self._stored_rankings:
            self.rankings[trial] = read_frame(ranking_location(self.experiment, trial))
            self.kept["rankings"] += 1
        else:
            self.queue.appendleft(task)  # before queued baselines: GRNBoost2's are long

    def poll(self) -> None:
        """Submit queued tasks onto the CPUs free now (at most every POLL_S)."""
        if not self.queue or time.monotonic() - self._polled < POLL_S:
            return
        self._polled = time.monotonic()
        free = int(ray.available_resources().get("CPU", 0.0) // self.cpu)
        for _ in range(min(free, len(self.queue))):
            self._submit(*self.queue.popleft())
        self._collect(timeout=0)

    def outstanding(self) -> Counter:
        """The tasks not yet done, by kind: "lasso", "grnboost2", "rankings"."""
        queued = [detail if kind == "baseline" else kind for kind, _, detail in self.queue]
        return Counter(queued + [detail if kind == "baseline" else kind
                                 for kind, _, detail in self.pending.values()])

    def finish(self, on_done: Callable[[], None] | None = None) -> None:
        """Submit everything still queued and wait for every task; `on_done()` as each ends."""
        while self.queue:
            self._submit(*self.queue.popleft())
        self._collect(timeout=None, on_done=on_done)

    def _submit(self, kind: str, group: Group, detail) -> None:
        tissue, cluster, replicate = group
        options = {"num_cpus": self.cpu}
        if kind == "baseline":
            ref = _baseline_task.options(**options).remote(
                self.blocks[tissue], cluster, replicate, detail, self.config.search,
                self.config.training.standardize, max(1, int(self.cpu)),
                baseline_location(self.experiment, baseline_name(*group, detail)))
        else:
            ref = _ranking_task.options(**options).remote(
                self.blocks[tissue], cluster, replicate, model_location(self.experiment, detail),
                self.config.search, self.cpu, self.config.resources.deterministic_ops,
                ranking_location(self.experiment, detail))
        self.pending[ref] = (kind, group, detail)
        self.submitted.append((detail if kind == "baseline" else kind, group, time.monotonic()))

    def _collect(self, timeout: float | None, on_done: Callable[[], None] | None = None) -> None:
        while self.pending:
            done, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
            if not done:
                return
            kind, group, detail = self.pending.pop(done[0])
            if on_done is not None:
                on_done()
            what = detail if kind == "baseline" else kind
            try:
                value = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the task's own error, a lost worker or object
                cause = getattr(exc, "cause", exc)
                self.failed.append(f"{what} {group}: {cause!r}")
                log.error("%s of %s failed: %r", what, group, cause)
                continue
            if kind == "baseline":
                self.baselines[group, detail] = value
                log.debug("baselines: %d (group, method) done", len(self.baselines))
            else:
                self.rankings[detail] = value


class GroupsFinished(Callback):
    """Queues a group's rankings once all its trials have finished, and submits the
    queued tasks between Tune's steps. The queue is the driver's (`GroupsFinished.tasks`)
    and the index of trials by group is rebuilt from Tune's trials, so the copy Tune
    restores on --resume works as the original did."""

    tasks: GroupTasks | None = None  # the running sweep's queue, set by the driver

    def __init__(self, trials_per_group: int):
        self.trials_per_group = trials_per_group  # Tune may not have made them all yet
        self._by_group: dict[Group, list] = {}
        self._indexed = 0  # Tune's trial list only grows: index what is new since last time

    def __getstate__(self) -> dict:
        return {"trials_per_group": self.trials_per_group}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["trials_per_group"])

    def on_step_end(self, iteration, trials, **info) -> None:
        if GroupsFinished.tasks is not None:
            GroupsFinished.tasks.poll()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # Called while `trial` is still RUNNING; it is the group's last when the others
        # have all terminated. Looks at the group's trials only: a sweep of thousands
        # of trials would otherwise scan them all at every completion.
        tasks = GroupsFinished.tasks
        for new in trials[self._indexed:]:
            self._by_group.setdefault(group_of(new.config), []).append(new)
        self._indexed = len(trials)
        members = self._by_group.get(group_of(trial.config), [])
        if (tasks is None or len(members) < self.trials_per_group
                or any(t is not trial and t.status != t.TERMINATED for t in members)):
            return
        chosen = choose({Trial.from_config(t.config["trial"]): float(pd.Series(t.last_result["best_val_r2"]).mean())
                         for t in members if "best_val_r2" in (t.last_result or {})})
        if chosen is not None:
            tasks.add_ranking(chosen)


def group_of(config: dict) -> Group:
    """A trial's group (from its Tune config): the trials that compete."""
    trial = config["trial"]
    return trial["tissue"], trial["cluster"], trial["replicate"]
