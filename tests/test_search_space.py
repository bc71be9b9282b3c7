"""The search space: config domains, the configurations a sweep trains, selection
over them, the Optuna searcher, and a sweep over λ x learning rate from YAML."""

import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, write_config

from mtlrank_ray.analysis.results import gene_table, selected_table, tissue_summary
from mtlrank_ray.config import ConfigError, config_from_dict, load_config
from mtlrank_ray.core.trial import Trial
from mtlrank_ray.distributed.search_space import settings, trials_per_group

SPACE = {"lambda": {"grid": [0.0, 0.001, 0.01, 0.1]}, "learning_rate": {"loguniform": [0.001, 0.03]},
         "batch_size": {"choice": [128, 256]}}


def search(space, **more):
    return config_from_dict({"search": {"space": space, **more}}).search


def test_the_issue_s_space_reads_as_written():
    config = config_from_dict({"search": {"space": SPACE, "num_samples": 4, "searcher": None}})
    assert config.search.lambdas == [0.0, 0.001, 0.01, 0.1]  # λ's grid is the λ list
    assert config.search.space == {"learning_rate": {"loguniform": [0.001, 0.03]},
                                   "batch_size": {"choice": [128, 256]}}
    # A fixed value is the training setting itself; λ fixed is a one-value grid.
    fixed = config_from_dict({"search": {"space": {"learning_rate": 0.003, "lambda": 0.1}}})
    assert fixed.training.learning_rate == 0.003 and fixed.search.lambdas == [0.1]
    assert fixed.search.space == {}
    # The resolved config, written to config.yaml and read back, is the same config.
    again = config_from_dict(config.to_dict())
    assert again == config


@pytest.mark.parametrize("space, more, message", [
    ({"lr": 0.01}, {}, "unknown key 'search.space.lr'; searchable keys: lambda, epochs"),
    ({"learning_rate": {"logunifrom": [0.001, 0.1]}}, {}, "search.space.learning_rate must be a value or one domain"),
    ({"learning_rate": {"loguniform": [0.1, 0.001]}}, {}, "must be [low, high] with low < high"),
    ({"learning_rate": {"loguniform": [0, 0.1]}}, {}, "search.space.learning_rate.loguniform[0] must be greater than 0"),
    ({"batch_size": {"uniform": [16.5, 64]}}, {}, "search.space.batch_size.uniform[0] must be an integer"),
    ({"standardize": {"uniform": [0, 1]}}, {}, "standardize is not a number; write {choice: [...]}"),
    ({"standardize": {"choice": ["train", "test"]}}, {}, "must be one of 'train', 'per_split'"),
    ({"epochs": {"grid": [2, 2]}}, {}, "lists a value twice"),
    ({"learning_rate": {"grid": []}}, {}, "search.space.learning_rate.grid must be a list"),
    ({"lambda": {"loguniform": [0.001, 0.1]}}, {}, "search.space.lambda must be a value or {grid: [...]}"),
    ({"lambda": {"grid": [0, 0.1]}}, {"lambdas": [0, 0.1]}, "λ is given twice"),
    ({"batch_size": {"grid": [128, 256]}}, {"num_samples": 3}, "search.num_samples 3 draws nothing"),
    ({"batch_size": {"grid": [128, 256]}, "learning_rate": {"loguniform": [0.001, 0.03]}},
     {"searcher": "optuna"}, "write search.space.batch_size as {choice: [...]}"),
    ({}, {"searcher": "optuna"}, "give search.space a choice, uniform or loguniform key"),
    ({}, {"searcher": "hyperopt"}, "search.searcher must be one of 'optuna'"),
    ({"batch_size": {"choice": [128, 256]}}, {"num_samples": 3}, "search.num_samples 3 is more than the 2 settings"),
    ({"batch_size": {"choice": [64, 128]}, "epochs": {"uniform": [2, 3]}}, {"searcher": "optuna", "num_samples": 5},
     "search.num_samples 5 is more than the 4 settings the sampled keys"),
    ({}, {"lambdas": [0, 0.1, 0.1]}, "search.lambdas must be a list of numbers of at least 0, without repeats"),
    ({"learning_rate": [0.001, 0.01]}, {}, "search.space.learning_rate is a list; for several values write {grid"),
    ({"learning_rate": "1e-3"}, {}, "YAML reads 1e-3 as text; write 0.001 or 1.0e-3"),
])
def test_a_malformed_space_names_the_key_and_the_file(tmp_path, space, more, message):
    path = write_config(tmp_path / "sweep.yaml", {"search": {"space": space, **more}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_settings_cross_the_grid_with_seeded_draws():
    space = {"learning_rate": {"loguniform": [0.001, 0.03]}, "standardize": {"grid": ["train", "per_split"]},
             "epochs": {"uniform": [2, 5]}, "batch_size": {"loguniform": [16, 512]}}
    drawn = settings(search(space, num_samples=20))
    assert len(drawn) == 40 and trials_per_group(search(space, num_samples=20)) == 40 * 4
    assert [list(s) for s in drawn] == [["epochs", "batch_size", "learning_rate", "standardize"]] * 40
    assert {s["standardize"] for s in drawn[:2]} == {"train", "per_split"}  # each draw at every grid point
    rates = np.array([s["learning_rate"] for s in drawn])
    assert (rates >= 0.001).all() and (rates <= 0.03).all()
    assert all(float(f"{r:.3g}") == r for r in rates)  # 3 significant digits: names are exact
    assert np.median(rates) < 0.0155  # log-uniform: the median near sqrt(0.001 * 0.03) = 0.0055
    epochs = {s["epochs"] for s in drawn}
    assert epochs == {2, 3, 4, 5} and all(type(s["batch_size"]) is int and 16 <= s["batch_size"] <= 512
                                          for s in drawn)
    assert settings(search(space, num_samples=20)) == drawn  # seeded by search.seed
    assert settings(search(space, num_samples=20, seed=1)) != drawn
    # Draws are distinct: a small choice space gives every one of its settings.
    assert sorted(s["batch_size"] for s in settings(search({"batch_size": {"choice": [64, 128, 256]}},
                                                           num_samples=3))) == [64, 128, 256]
    assert settings(search({})) == [{}]  # λ alone: one setting


def test_a_trial_name_is_its_configuration():
    trial = Trial("Liver", 2, 1, 0.01, (("batch_size", 128), ("learning_rate", 0.00343)))
    assert trial.name == "Liver_c2_r1_lambda0.01_bs128_lr0.00343"
    assert Trial.from_config(trial.config) == trial
    # From a results row: an integer column read back as float is the setting it was.
    row = {**trial.config, "batch_size": np.float64(128.0), "alpha": np.nan}
    assert Trial.from_config(row) == trial and Trial.from_config(row).name == trial.name
    assert trial.at(0).name == "Liver_c2_r1_lambda0_bs128_lr0.00343"
    assert Trial("Liver", 2, 1, 0.01).name == "Liver_c2_r1_lambda0.01"


def fake_runs(values: dict) -> list:
    """(spec, metrics) pairs for one group's trials with the given mean validation R²."""
    runs = []
    for (lam, rate), value in values.items():
        spec = Trial("Liver", 0, 0, lam, (("learning_rate", rate),)).config
        runs.append((spec, {"genes": ["a", "b"], "best_val_r2": [value - 0.01, value + 0.01],
                            "best_test_r2": [value, value], "best_epoch": 3, "epoch": 4}))
    return runs


def test_selection_compares_every_configuration_with_lambda_zero_at_the_chosen_settings():
    genes = gene_table(fake_runs({(0.0, 0.001): 0.40, (0.01, 0.001): 0.30,
                                  (0.0, 0.01): 0.10, (0.01, 0.01): 0.20}), 4, [])
    assert list(genes.columns[:8]) == ["tissue", "cluster", "gene", "replicate", "model", "lambda",
                                       "learning_rate", "alpha"]
    selected = selected_table(genes)
    assert len(selected) == 1
    row = selected.iloc[0]
    assert (row["lambda"], row["learning_rate"]) == (0.0, 0.001) and row.mean_val_r2 == pytest.approx(0.40)
    # A λ > 0 best at the other rate: λ = 0 beside it is the one at that rate, not the best λ = 0.
    genes = gene_table(fake_runs({(0.0, 0.001): 0.40, (0.01, 0.001): 0.30,
                                  (0.0, 0.01): 0.10, (0.01, 0.01): 0.50}), 4, [])
    row = selected_table(genes).iloc[0]
    assert (row["lambda"], row["learning_rate"]) == (0.01, 0.01)
    assert row.lambda0_mean_val_r2 == pytest.approx(0.10) and row.mean_val_r2 == pytest.approx(0.50)
    summary = tissue_summary(genes, selected_table(genes)).iloc[0]
    assert summary.trials == 4 and summary.test_r2_lambda0 == pytest.approx(0.10)
    assert summary.lambda_selected == "0.01: 1" and summary.learning_rate_selected == "0.01: 1"
    # Ties go to the smallest λ, then the smallest setting.
    tied = selected_table(gene_table(fake_runs({(0.01, 0.01): 0.3, (0.01, 0.001): 0.3, (0.1, 0.001): 0.3}), 4, []))
    assert (tied.iloc[0]["lambda"], tied.iloc[0]["learning_rate"]) == (0.01, 0.001)


def optuna_searcher(num_samples=3, seed=0):
    from mtlrank_ray.distributed.optuna_search import GroupedOptuna

    config = search({"learning_rate": {"loguniform": [0.001, 0.03]}, "batch_size": {"choice": [64, 256]}},
                    num_samples=num_samples, searcher="optuna", lambdas=[0.0, 0.1], seed=seed)
    return GroupedOptuna([("Liver", 0, 0), ("Liver", 1, 0)], config, "mean_val_r2")


def test_the_optuna_searcher_never_trains_a_setting_twice():
    from mtlrank_ray.distributed.optuna_search import GroupedOptuna

    config = search({"batch_size": {"choice": [64, 128, 256]}}, num_samples=3, searcher="optuna",
                    lambdas=[0.0, 0.1], seed=0)
    searcher = GroupedOptuna([("Liver", 0, 0)], config, "mean_val_r2")
    configs = [searcher.suggest(f"t{i}")["trial"] for i in range(6)]
    for i in range(6):
        searcher.on_trial_complete(f"t{i}", {"best_mean_val_r2": 0.1})
    assert searcher.suggest("t6") == "FINISHED"
    assert sorted({c["batch_size"] for c in configs}) == [64, 128, 256]
    assert len({Trial.from_config(c).name for c in configs}) == 6
    # Float choices are trained as listed, not rounded.
    config = search({"learning_rate": {"choice": [0.012345, 0.2]}}, num_samples=2, searcher="optuna", lambdas=[0.0])
    searcher = GroupedOptuna([("Liver", 0, 0)], config, "mean_val_r2")
    assert {searcher.suggest(f"t{i}")["trial"]["learning_rate"] for i in range(2)} == {0.012345, 0.2}


def drive(searcher, first: int = 0, last: int | None = None) -> list[dict]:
    """Ask for trials and complete each at once, with R² rising with the learning rate."""
    configs = []
    for i in range(first, last if last is not None else searcher.total_trials):
        config = searcher.suggest(f"t{i}")
        configs.append(config["trial"])
        value = math.log(config["trial"]["learning_rate"]) - config["trial"]["lambda"]
        searcher.on_trial_complete(f"t{i}", {"best_mean_val_r2": value})
    return configs


def test_the_optuna_searcher_trains_each_setting_at_every_lambda(tmp_path):
    searcher = optuna_searcher()
    assert searcher.total_trials == 2 * 3 * 2
    configs = drive(searcher)
    assert searcher.suggest("more") == "FINISHED"
    trials = [Trial.from_config(c) for c in configs]
    assert len(set(trials)) == len(trials) == 12
    for group in (0, 1):
        mine = [t for t in trials if t.cluster == group]
        by_setting = {}
        for t in mine:
            by_setting.setdefault(t.settings, set()).add(t.lam)
        assert len(by_setting) == 3 and all(lams == {0.0, 0.1} for lams in by_setting.values())
        for setting in by_setting:
            values = dict(setting)
            assert 0.001 <= values["learning_rate"] <= 0.03 and values["batch_size"] in (64, 256)
        # Optuna was told each setting's best over λ (λ = 0 here).
        study = searcher.studies["Liver", group, 0]
        told = sorted(t.value for t in study.trials)
        assert told == pytest.approx(sorted(math.log(dict(s)["learning_rate"]) for s in by_setting), abs=0.01)
    # Seeded: the same proposals again; another seed proposes others.
    assert drive(optuna_searcher()) == configs
    assert drive(optuna_searcher(seed=1)) != configs
    # Saved midway and restored (as a resumed sweep does), it goes on as it would have.
    saved = optuna_searcher()
    drive(saved, 0, 5)
    saved.save(str(tmp_path / "searcher.pkl"))
    restored = optuna_searcher(seed=5)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert drive(restored, 5) == configs[5:]


@pytest.mark.slow
def test_a_sweep_over_lambda_and_learning_rate_from_yaml(tmp_path):
    """tune_configs/search.yaml, run as README writes it: every λ at every drawn
    learning rate; the results, Tune's files and the report show both."""
    shutil.copy(REPO / "tune.py", tmp_path)
    shutil.copytree(REPO / "tune_configs", tmp_path / "tune_configs")
    run = subprocess.run([sys.executable, "tune.py", "--demo", "--config", "tune_configs/search.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "runs/search"
    rates = sorted(s["learning_rate"] for s in settings(load_config(REPO / "tune_configs/search.yaml").search))
    genes = pd.read_parquet(out / "gene_r2.parquet")
    networks = genes[genes.model == "mtlrank"]
    assert sorted(networks.learning_rate.unique()) == rates and len(rates) == 2
    assert networks.groupby(["lambda", "learning_rate"]).size().to_dict() == {
        (lam, rate): 2 * 40 for lam in (0.0, 0.01) for rate in rates}
    assert genes.loc[genes.model != "mtlrank", "learning_rate"].isna().all()
    selected = pd.read_csv(out / "selected.csv")
    assert set(selected.learning_rate) <= set(rates) and len(selected) == 8
    for row in selected.to_dict("records"):  # the chosen configuration is the group's best
        mine = networks[(networks.tissue == row["tissue"]) & (networks.cluster == row["cluster"])]
        means = mine.groupby(["lambda", "learning_rate"]).val_r2.mean()
        assert means.max() == pytest.approx(row["mean_val_r2"])
        assert means[0.0, row["learning_rate"]] == pytest.approx(row["lambda0_mean_val_r2"])
    assert "learning_rate_selected" in (out / "summary.md").read_text()
    # Tune's own files: the searched key in every trial's config, progress.csv and TensorBoard.
    trial = Trial.from_config(selected.iloc[0].to_dict())
    folder = out / "sweep" / trial.name
    assert f"_lr{trial.settings[0][1]:g}" in trial.name
    assert '"learning_rate": ' in (folder / "params.json").read_text()
    progress = pd.read_csv(folder / "progress.csv")
    assert (progress.learning_rate == dict(trial.settings)["learning_rate"]).all()
    assert (progress["lambda"] == trial.lam).all()
    events = b"".join(p.read_bytes() for p in folder.glob("events.out.tfevents.*"))
    assert b"trial/learning_rate" in events and b"trial/lambda" in events  # hparams
    assert (out / "models" / f"{trial.name}.npz").is_file()
    assert (out / "report/search_space.png").is_file()
    assert "search_space.png" in (out / "report/index.html").read_text()


def test_searched_epochs_end_at_their_own_last_epoch_and_the_rungs_before_it():
    from mtlrank_ray.distributed.trial_storage import ending_epochs, max_epochs

    config = config_from_dict({"training": {"epochs": 3}, "asha": {"grace_period": 1, "reduction_factor": 2},
                               "search": {"space": {"epochs": {"grid": [2, 8]}}}})
    assert max_epochs(config) == 8  # grouped ASHA's max_t: the longest trial
    assert ending_epochs(config, 2, baseline=False) == {1, 2}
    assert ending_epochs(config, 8, baseline=False) == {1, 2, 4, 8}
    assert ending_epochs(config, 8, baseline=True) == {8}
    stopped = gene_table([({**Trial("Liver", 0, 0, 0.1, (("epochs", 2),)).config},
                           {"genes": ["a"], "best_val_r2": [0.1], "best_test_r2": [0.1], "best_epoch": 2, "epoch": 2})],
                         3, [])
    assert not stopped.stopped_early.any()  # 2 of its own 2 epochs, not of training.epochs' 3
