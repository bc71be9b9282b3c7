import os
import re

import pytest
from conftest import REPO

from mtlrank_ray.cli import main
from mtlrank_ray.config import Config, config_from_dict, load_config
from mtlrank_ray.errors import ConfigError


@pytest.mark.parametrize("path", sorted((REPO / "tune_configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), Config)


def test_gpu_config_shares_gpus():
    config = load_config(REPO / "tune_configs" / "gpu.yaml")
    assert config.resources.gpu == 0.25 and config.run.max_failures == 2


def test_seed_config_holds_the_notebooks_settings():
    config = load_config(REPO / "tune_configs" / "seed.yaml")
    assert (config.genes.n_genes, config.genes.n_clusters, config.genes.min_cells) == (500, 20, 4000)
    assert config.genes.min_cells_for("Liver", 1500) == 1000  # the counts, however few cells
    assert config.genes.min_cells_for("Kidney_Left", 6000) == 4000
    assert config.search.lambdas == [0.01] and config.search.replicates == 3
    assert config.training.standardize == "per_split" and config.training.epochs == 10
    assert config.asha.enabled is False


def test_the_default_gene_threshold_scales_with_the_tissue():
    """The seed's counts for an atlas's tissues; half the cells of a smaller sample."""
    genes = load_config(REPO / "tune_configs" / "default.yaml").genes
    assert genes == config_from_dict({}).genes
    assert genes.min_cells_for("Kidney_Left", 20000) == 4000
    assert genes.min_cells_for("Liver", 20000) == 1000
    assert genes.min_cells_for("Pancreas", 3696) == 1848  # scVelo's pancreas example
    assert genes.min_cells_for("Liver", 1500) == 750


def test_default_grid_includes_lambda_zero():
    assert 0.0 in load_config(REPO / "tune_configs" / "default.yaml").search.lambdas


def test_missing_keys_take_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("genes:\n  n_genes: 50\n")
    config = load_config(path)
    assert config.genes.n_genes == 50 and config.genes.n_clusters == 20
    assert config.training == Config().training


@pytest.mark.parametrize("text, expected", [
    ("genes:\n  n_gene: 5\n", "unknown key 'genes.n_gene'; known keys in genes: n_genes"),
    ("gene:\n  n_genes: 5\n", "unknown key 'gene'"),
    ("genes:\n  n_genes: '500'\n", "genes.n_genes must be an integer, got '500' (str)"),
    ("genes:\n  n_genes: 2.5\n", "genes.n_genes must be an integer"),
    ("genes:\n  n_genes: 0\n", "genes.n_genes must be greater than 0"),
    ("training:\n  standardize: test\n", "training.standardize must be one of 'train', 'per_split'"),
    ("training:\n  learning_rate: fast\n", "training.learning_rate must be a number"),
    ("search:\n  lambdas: 0.1\n", "search.lambdas must be a non-empty list"),
    ("search:\n  lambdas: [0.1, x]\n", "search.lambdas[1] must be a number"),
    ("search:\n  lambdas: [-0.1]\n", "search.lambdas must be a list of numbers of at least 0"),
    ("search:\n  val_fraction: 1.5\n", "search.val_fraction must be between 0 and 1"),
    ("asha:\n  enabled: yes please\n", "asha.enabled must be true or false"),
    ("asha:\n  reduction_factor: 1\n", "asha.reduction_factor must be at least 2"),
    ("resources:\n  gpu: -1\n", "resources.gpu must be at least 0"),
    ("genes:\n  min_cells_by_tissue: {Liver: many}\n", "genes.min_cells_by_tissue.Liver must be an integer"),
    ("genes: [1, 2]\n", "genes must be a mapping"),
    ("- 1\n", "the top level must be a mapping"),
    ("genes: {n_genes: 5\n", "is not valid YAML (line 2, column 1): expected ',' or '}'"),
    ("search: {lambdas: [0\n", "is not valid YAML (line 2, column 1)"),
])
def test_malformed_config_names_key_and_file(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)  # one line
    assert expected in str(info.value)


def test_missing_config_file(tmp_path):
    """A typo gets the nearest YAML file beside it; no near one, the files there."""
    with pytest.raises(ConfigError, match="nope.yaml does not exist; pass an existing YAML file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "smoke.yaml").write_text("{}\n")
    (tmp_path / "seed.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=f"smok.yaml does not exist; did you mean {tmp_path / 'smoke.yaml'}\\?$"):
        load_config(tmp_path / "smok.yaml")
    with pytest.raises(ConfigError, match="atlas.yaml does not exist; YAML files there: seed.yaml, smoke.yaml$"):
        load_config(tmp_path / "atlas.yaml")


def test_a_shipped_config_named_from_another_folder_is_pointed_to(tmp_path, monkeypatch):
    """`cd demo` and then `--config tune_configs/smoke.yaml`: the checkout's file is one up."""
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path / "demo")
    shipped = os.path.relpath(REPO / "tune_configs" / "smoke.yaml")
    with pytest.raises(ConfigError, match=f"tune_configs/smoke.yaml does not exist; did you mean "
                                          f"{re.escape(shipped)}\\? \\(a relative path"):
        load_config("tune_configs/smoke.yaml")


def test_cli_reports_a_bad_config_without_traceback(atlas, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("genes:\n  n_clusters: many\n")
    code = main(["prepare", "--data", str(atlas), "--config", str(bad), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"error: {bad}: genes.n_clusters must be an integer, got 'many' (str)"
    assert not (tmp_path / "s").exists()


def test_a_concurrency_cap_below_a_group_is_refused_before_anything_runs(tmp_path, capsys):
    """Grouped ASHA waits at each rung for a whole group: a smaller cap would wait for ever."""
    config = tmp_path / "capped.yaml"
    config.write_text("search: {lambdas: [0.0, 0.01, 0.1]}\nresources: {max_concurrent_trials: 2}\n")
    from mtlrank_ray.cli import tune_main

    assert tune_main(["--config", str(config), "--data", str(tmp_path / "nowhere"),
                      "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: resources.max_concurrent_trials 2 is below the 3 trials of a group: with "
        "asha.enabled a group's trials wait at each rung until all of them reach it; allow at "
        "least 3, or set asha.enabled: false.")
    assert not (tmp_path / "run").exists()
