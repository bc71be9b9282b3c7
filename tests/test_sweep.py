"""Ray Data blocks, the trial grid and the results tables."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_SETTINGS

from mtlrank_ray.analysis.baselines import BaselineFit, fit_baseline
from mtlrank_ray.analysis.results import (
    collect,
    gene_table,
    selected_table,
    write_results,
)
from mtlrank_ray.config import config_from_dict
from mtlrank_ray.core.cluster_data import ClusterData, split_cells
from mtlrank_ray.core.trial import Trial
from mtlrank_ray.data import load_tissue, prepare_store
from mtlrank_ray.distributed import ray_data
from mtlrank_ray.distributed.group_tasks import GroupTasks
from mtlrank_ray.distributed.tuner import groups, trial_grid


@pytest.fixture(scope="module")
def store(small_atlas_template, tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "store"
    prepare_store(small_atlas_template, config_from_dict(SMALL_SETTINGS), path)
    return path


def test_blocks_assemble_the_same_cluster_data_as_the_store(local_ray, store):
    blocks = ray_data.materialize_tissue(str(store), "Liver")
    tissue = load_tissue(store, "Liver")
    assert ray_data.tissue_clusters(blocks) == [0, 1, 2, 3]
    for cluster in range(4):
        ours, expected = ray_data.cluster_data(blocks, cluster), ClusterData.from_tissue(tissue, cluster)
        assert ours.genes == expected.genes
        np.testing.assert_array_equal(ours.expression, expected.expression)
        np.testing.assert_array_equal(ours.target, expected.target)  # NaN where NaN
        np.testing.assert_array_equal(ours.act_mean, expected.act_mean)
        np.testing.assert_array_equal(ours.act_sum, expected.act_sum)
    assert np.isnan(ours.target).any()


def test_trial_grid_covers_every_tissue_cluster_replicate_and_lambda(local_ray, store):
    config = config_from_dict({"search": {"replicates": 2, "lambdas": [0.0, 0.1, 1.0]}})
    tissues = [ray_data.materialize_tissue(str(store), t) for t in ("Kidney_Left", "Liver")]
    grid = trial_grid(tissues, config)
    assert len(grid) == 2 * 4 * 2 * 3
    assert len({tuple(t.values()) for t in grid}) == len(grid)
    assert grid[0]["tissue"] == "Kidney_Left" and grid[0]["cluster"] == 0 and grid[0]["replicate"] == 0
    # Trials start in grid order, and the first at a rung is never stopped there: within a
    # group the λ come in a seeded random order, whatever order the config lists them in.
    reordered = config_from_dict({"search": {"replicates": 2, "lambdas": [1.0, 0.0, 0.1]}})
    assert trial_grid(tissues, reordered) == grid == trial_grid(tissues, config)
    firsts = [grid[i]["lambda"] for i in range(0, len(grid), 3)]
    assert len(set(firsts)) > 1  # no λ always starts first


def run_baselines(blocks, config, experiment):
    """The baselines of every group, as the sweep runs them: ({(group, method): fit}, failures)."""
    tasks = GroupTasks(blocks, config, str(experiment))
    tasks.add_baselines(groups(list(blocks.values()), config))
    tasks.finish()
    return tasks.baselines, tasks.failed


def fake_trials():
    """(spec, last metrics) of two groups; in cluster 1, λ=0.1 wins on validation."""
    trials = []
    for cluster, scores in ((0, {0.0: 0.5, 0.1: 0.4}), (1, {0.0: 0.2, 0.1: 0.3})):
        for lam, score in scores.items():
            stopped = score < 0.3
            trials.append(({"tissue": "Liver", "cluster": cluster, "replicate": 0, "lambda": lam},
                           {"genes": [f"g{cluster}a", f"g{cluster}b"], "best_val_r2": [score, score + 0.1],
                            "best_test_r2": [score - 0.1, score], "best_epoch": 1,
                            "epoch": 2 if stopped else 4}))
    return trials


def fake_baselines():
    """The baselines of the same two groups; the lasso beats every λ on validation in
    cluster 0, GRNBoost2 in cluster 1."""
    return [(("Liver", cluster, 0),
             BaselineFit(method, [f"g{cluster}a", f"g{cluster}b"], np.array(setting), np.zeros((2, 3)),
                         np.array([val, val]), np.array([val - 0.2, val - 0.2])))
            for method, setting, scores in (("lasso", [0.1, 0.01], (0.9, 0.1)),
                                            ("grnboost2", [300, 45], (0.2, 0.8)))
            for cluster, val in enumerate(scores)]


def test_results_tables():
    genes = gene_table(fake_trials(), epochs=4, baselines=fake_baselines(), target="spliced")
    assert list(genes.columns) == ["tissue", "cluster", "gene", "replicate", "model", "lambda",
                                   "alpha", "trees", "val_r2", "test_r2", "best_epoch", "epochs_run",
                                   "stopped_early", "target"]
    assert len(genes) == 16 and genes.stopped_early.sum() == 2 and set(genes.target) == {"spliced"}
    lasso, boosted = genes[genes.model == "lasso"], genes[genes.model == "grnboost2"]
    assert len(lasso) == 4 and lasso["lambda"].isna().all() and lasso.best_epoch.isna().all()
    assert lasso.alpha.tolist() == [0.1, 0.01, 0.1, 0.01] and lasso.trees.isna().all()
    assert boosted.trees.tolist() == [300, 45, 300, 45] and boosted.alpha.isna().all()
    selected = selected_table(genes).set_index("cluster")
    assert selected.loc[0, "lambda"] == 0.0 and selected.loc[1, "lambda"] == 0.1  # λ only
    assert selected.loc[1, "mean_test_r2"] == pytest.approx(0.25)
    assert selected.loc[1, "lambda0_mean_test_r2"] == pytest.approx(0.15)
    assert selected.loc[0, "lasso_mean_val_r2"] == pytest.approx(0.9)
    assert selected.loc[1, "lasso_mean_test_r2"] == pytest.approx(-0.1)
    assert selected.loc[1, "grnboost2_mean_val_r2"] == pytest.approx(0.8)
    assert selected.loc[0, "grnboost2_mean_test_r2"] == pytest.approx(0.0)
    assert set(selected.target) == {"spliced"}


def test_results_files_are_replaced_not_appended(tmp_path):
    genes = gene_table(fake_trials(), epochs=4, baselines=fake_baselines())
    previous = os.umask(0o022)
    try:
        for _ in range(2):
            summary = write_results(tmp_path, genes, [], "test run")
    finally:
        os.umask(previous)
    assert (tmp_path / "gene_r2.csv").stat().st_mode & 0o777 == 0o644  # the umask's, not private
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "gene_r2.parquet"), genes)
    assert len(pd.read_csv(tmp_path / "gene_r2.csv")) == 16
    assert len(pd.read_csv(tmp_path / "selected.csv")) == 2
    assert summary.loc[0, "test_r2_selected"] == pytest.approx(genes.query(
        "(cluster == 0 and `lambda` == 0) or (cluster == 1 and `lambda` == 0.1)").test_r2.mean())
    assert summary.loc[0, "test_r2_lasso"] == pytest.approx(0.3)
    assert summary.loc[0, "test_r2_grnboost2"] == pytest.approx(0.3)
    assert summary.loc[0, "trials"] == 4 and summary.loc[0, "stopped_early"] == 1
    assert "| Liver |" in (tmp_path / "summary.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gene_r2.csv", "gene_r2.parquet", "selected.csv", "summary.md"]  # no temporary files


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    genes = gene_table(fake_trials(), epochs=4, baselines=fake_baselines())
    write_results(tmp_path, genes, [], "first")
    before = (tmp_path / "gene_r2.csv").read_text()
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_results(tmp_path, genes.assign(test_r2=0.0), [], "second")
    assert (tmp_path / "gene_r2.csv").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_baseline_tasks_fit_every_group_as_the_baselines_do_locally(local_ray, store, tmp_path):
    config = config_from_dict({"search": {"replicates": 2, "lambdas": [0.0, 0.1]}})
    blocks = {"Liver": ray_data.materialize_tissue(str(store), "Liver")}
    fits, failed = run_baselines(blocks, config, tmp_path / "sweep")
    assert not failed
    assert sorted(fits) == sorted((("Liver", cluster, replicate), method) for cluster in range(4)
                                  for replicate in range(2) for method in ("lasso", "grnboost2"))
    search = config.search
    data = ClusterData.from_tissue(load_tissue(store, "Liver"), 1)
    split = split_cells(len(data.expression), search.test_fraction, search.val_fraction,
                        search.seed, 1)  # spelled out: the tasks' split is the trainer's
    for method in ("lasso", "grnboost2"):
        fit = fits[("Liver", 1, 1), method]  # cluster 1, replicate 1
        expected = fit_baseline(method, data, split, config.training.standardize, search, replicate=1)
        assert fit.method == method and fit.genes == expected.genes
        np.testing.assert_array_equal(fit.importance, expected.importance)
        np.testing.assert_array_equal(fit.setting, expected.setting)
        np.testing.assert_array_equal(fit.test_r2, expected.test_r2)
    # Replicates are drawn apart: other cells, other trees.
    assert not np.array_equal(fits[("Liver", 1, 0), "grnboost2"].importance,
                              fits[("Liver", 1, 1), "grnboost2"].importance)
    # Each task wrote its fit to the sweep's storage; a resumed sweep's queue loads them
    # and queues none, a new sweep's loads none.
    stored = {p.stem: BaselineFit.load(p) for p in (tmp_path / "sweep" / "baselines").glob("*.npz")}
    assert len(stored) == 16
    np.testing.assert_array_equal(stored["Liver_c1_r1_grnboost2"].importance,
                                  fits[("Liver", 1, 1), "grnboost2"].importance)
    resumed = GroupTasks(blocks, config, str(tmp_path / "sweep"), resumed=True)
    resumed.add_baselines(groups(list(blocks.values()), config))
    assert not resumed.queue and resumed.kept["baselines"] == 16 and sorted(resumed.baselines) == sorted(fits)
    np.testing.assert_array_equal(resumed.baselines[("Liver", 1, 1), "lasso"].parameters["coef"],
                                  fits[("Liver", 1, 1), "lasso"].parameters["coef"])
    new = GroupTasks(blocks, config, str(tmp_path / "sweep"))
    new.add_baselines(groups(list(blocks.values()), config))
    assert len(new.queue) == 16 and not new.baselines


def test_a_failed_baseline_is_reported_not_raised(local_ray, store, tmp_path):
    config = config_from_dict({"search": {"replicates": 1, "val_fraction": 0.001}})
    blocks = {"Liver": ray_data.materialize_tissue(str(store), "Liver")}
    fits, failed = run_baselines(blocks, config, tmp_path / "sweep")  # one validation cell: R² is undefined
    assert fits == {} and len(failed) == 8
    assert "cells with a target value in the val split; R² needs at least 2" in failed[0]
    assert {line.split()[0] for line in failed} == {"lasso", "grnboost2"}


def test_a_trial_that_failed_after_reporting_is_listed_never_selected():
    spec = {"tissue": "Liver", "cluster": 0, "replicate": 0}
    metrics = {"genes": ["g1"], "best_val_r2": [0.9], "best_test_r2": [0.8], "best_epoch": 2, "epoch": 2}
    failed_late = SimpleNamespace(config={"trial": {**spec, "lambda": 0.1}}, error=RuntimeError("node lost"),
                                  metrics={**metrics, "best_val_r2": [0.99]})
    finished = SimpleNamespace(config={"trial": {**spec, "lambda": 0.0}}, error=None, metrics=metrics)
    trials, failed = collect([failed_late, finished])
    assert [t[0]["lambda"] for t in trials] == [0.0] and len(failed) == 1 and "0.1" in failed[0]
    assert selected_table(gene_table(trials, epochs=2, baselines=[]))["lambda"].tolist() == [0.0]


def test_trial_grid_trains_every_setting_at_every_lambda_in_every_group(local_ray, store):
    config = config_from_dict({"search": {"replicates": 1, "lambdas": [0.0, 0.1], "num_samples": 3,
                                          "space": {"learning_rate": {"loguniform": [0.001, 0.03]},
                                                    "standardize": {"grid": ["train", "per_split"]}}}})
    tissues = [ray_data.materialize_tissue(str(store), "Liver")]
    grid = trial_grid(tissues, config)
    assert len(grid) == 4 * 3 * 2 * 2
    names = [Trial.from_config(t).name for t in grid]
    assert len(set(names)) == len(names)  # every trial's folder and model file its own
    for cluster in range(4):
        mine = [Trial.from_config(t) for t in grid if t["cluster"] == cluster]
        settings = {t.settings for t in mine}
        assert len(settings) == 6 and all({t.lam for t in mine if t.settings == s} == {0.0, 0.1}
                                          for s in settings)
    assert len({Trial.from_config(t).settings for t in grid}) == 6  # shared by every group


def fake_training(config, tissues, settings):
    """A trial that reports, without TensorFlow, R² rising with the learning rate."""
    from ray import tune

    spec = Trial.from_config(config["trial"])
    value = float(np.log(dict(spec.settings)["learning_rate"])) / 10 + 1 - spec.lam
    for epoch in range(1, settings["config"].training.epochs + 1):
        tune.report({"epoch": epoch, "mean_val_r2": value, "best_mean_val_r2": value,
                     "best_val_r2": [value], "best_test_r2": [value], "genes": ["g"], "best_epoch": epoch})


def test_an_optuna_sweep_runs_each_groups_settings_at_every_lambda(local_ray, store, tmp_path):
    from mtlrank_ray.distributed.tuner import run_sweep

    config = config_from_dict({
        "training": {"epochs": 4}, "asha": {"grace_period": 1},
        "search": {"replicates": 1, "lambdas": [0.0, 0.5, 1.0], "num_samples": 2, "searcher": "optuna",
                   "space": {"learning_rate": {"loguniform": [0.001, 0.03]}}}})
    blocks = {"Liver": ray_data.materialize_tissue(str(store), "Liver")}
    grid = run_sweep(blocks, config, tmp_path / "run", verbose=0, trainable=fake_training)
    trials = [(Trial.from_config(r.config["trial"]), r.metrics["epoch"]) for r in grid]
    # The sweep's state keeps each finished trial's metric summary, not its windows of values.
    state = json.loads(max((tmp_path / "run" / "sweep").glob("experiment_state-*.json")).read_text())
    stored = [json.loads(metadata) for _, metadata in state["trial_data"]]
    assert len(stored) == len(trials)
    assert all(m["metric_n_steps"] == {} and "last-5-avg" in m["metric_analysis"]["mean_val_r2"]
               for m in stored)
    assert len(trials) == 4 * 2 * 3 and not any(r.error for r in grid)
    for cluster in range(4):
        mine = [(t, epochs) for t, epochs in trials if t.cluster == cluster]
        settings = {t.settings for t, _ in mine}
        assert len(settings) == 2 and all({t.lam for t, _ in mine if t.settings == s} == {0.0, 0.5, 1.0}
                                          for s in settings)
        assert all(epochs == 4 for t, epochs in mine if t.lam == 0)  # the baseline is never stopped
        assert any(epochs < 4 for t, epochs in mine)  # grouped ASHA stops a weak configuration
    # Tune saved the searcher with the sweep: --resume restores it, and a finished sweep's
    # searcher proposes nothing more.
    assert list((tmp_path / "run" / "sweep").glob("searcher-state-*.pkl"))
    again = run_sweep(blocks, config, tmp_path / "run", resume_sweep=True, verbose=0, trainable=fake_training)
    assert sorted(Trial.from_config(r.config["trial"]).name for r in again) == sorted(t.name for t, _ in trials)
