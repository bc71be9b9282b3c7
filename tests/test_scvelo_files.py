"""Input written by scVelo itself: its simulated cells run through its own velocity
pipeline (filter_and_normalize, moments, velocity) and saved with write_h5ad, with
gene symbols as var names, made unique the way scanpy users do, and sparse X."""

import logging
import shutil
from importlib.resources import files
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import yaml
from conftest import REPO, write_config

from mtlrank_ray.config import config_from_dict
from mtlrank_ray.data import load_tissue, prepare_store
from mtlrank_ray.data import scvelo as scvelo_input
from mtlrank_ray.data.references import ID_MAP, TF_LIST
from mtlrank_ray.errors import InputError

SETTINGS = {"genes": {"n_genes": 16, "min_cells": 100, "min_cells_by_tissue": {}, "n_clusters": 4},
            "data": {"expression_is_log": True}}
N_TFS = 40


def reference_genes() -> pd.DataFrame:
    """Real human ids and symbols (the package's demo gene table)."""
    return pd.read_csv(files("mtlrank_ray") / "resources" / "demo_genes.csv")


def scvelo_output(path, seed=0, names=None):
    """What a scVelo user saves: simulated counts, symbols as var names, scVelo's pipeline."""
    scv = pytest.importorskip("scvelo")
    genes = reference_genes()
    adata = scv.datasets.simulation(random_seed=seed, n_obs=500, n_vars=80)
    if names is None:
        names = [*genes.symbol[genes.is_tf][:N_TFS], *genes.symbol[~genes.is_tf][:39]]
        names.append(names[N_TFS])  # a symbol twice, then made unique: "<symbol>-1"
    adata.var_names = names
    adata.var_names_make_unique()
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    adata.X = scipy.sparse.csr_matrix(adata.layers["spliced"])
    for layer in ("spliced", "unspliced"):
        adata.layers[layer] = scipy.sparse.csr_matrix(adata.layers[layer])
    scv.settings.verbosity = 0
    scv.pp.filter_and_normalize(adata, min_shared_counts=5)
    scv.pp.moments(adata, n_pcs=10, n_neighbors=15)
    # scVelo 0.3.4's default (stochastic) mode fails on NumPy 2.4; the steady-state model
    # writes the same layers.
    scv.tl.velocity(adata, mode="deterministic")
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


def references(root, tf_list_by="Ensembl ID"):
    genes = reference_genes()
    tfs = genes[genes.is_tf]
    (root / TF_LIST).parent.mkdir(parents=True, exist_ok=True)
    column = tfs.ensembl_id if tf_list_by == "Ensembl ID" else tfs.symbol
    pd.DataFrame({tf_list_by: column.to_numpy()}).to_csv(root / TF_LIST)
    (root / ID_MAP).parent.mkdir(parents=True, exist_ok=True)
    genes.rename(columns={"symbol": "gene_symbol"})[["ensembl_id", "gene_symbol"]].to_csv(root / ID_MAP)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return scvelo_output(tmp_path_factory.mktemp("scvelo") / "pancreas.h5ad")


@pytest.fixture
def root(written, tmp_path):
    root = tmp_path / "data_root"
    (root / "data/h5ad/Pancreas").mkdir(parents=True)
    shutil.copy(written, root / "data/h5ad/Pancreas/pancreas.h5ad")
    references(root)
    return root


def test_symbols_and_sparse_x_are_read_as_scvelo_wrote_them(root, written, tmp_path, caplog):
    adata = anndata.read_h5ad(written)
    assert scipy.sparse.issparse(adata.X) and not adata.var_names.str.startswith("ENS").any()
    with caplog.at_level(logging.WARNING):
        prepare_store(root, config_from_dict(SETTINGS), tmp_path / "store")
    duplicate = adata.var_names[adata.var_names.str.endswith("-1")][0]
    assert f"1 of {adata.n_vars} names are neither ids nor symbols" in caplog.text
    assert duplicate in caplog.text
    tissue = load_tissue(tmp_path / "store", "Pancreas")
    id_of = dict(zip(reference_genes().symbol, reference_genes().ensembl_id))
    symbol_of = {v: k for k, v in id_of.items()}
    tf_symbols = [symbol_of[t] for t in tissue.tfs]
    genes = reference_genes()
    assert set(tf_symbols) == set(genes.symbol[genes.is_tf][:N_TFS]) & set(adata.var_names)
    assert list(tissue.tf_symbols) == tf_symbols
    np.testing.assert_array_equal(tissue.expression, adata[:, tf_symbols].X.toarray().astype(np.float32))
    gene_symbols = [symbol_of[g] for g in tissue.genes]
    assert adata.var.velocity_genes[gene_symbols].all()
    np.testing.assert_array_equal(tissue.target, adata[:, gene_symbols].layers["velocity"].astype(np.float32))


def test_a_tf_list_of_symbols_gives_the_same_store(root, tmp_path):
    config = config_from_dict(SETTINGS)
    prepare_store(root, config, tmp_path / "by_id")
    references(root, tf_list_by="symbol")
    prepare_store(root, config, tmp_path / "by_symbol")
    by_id, by_symbol = load_tissue(tmp_path / "by_id", "Pancreas"), load_tissue(tmp_path / "by_symbol", "Pancreas")
    assert list(by_symbol.tfs) == list(by_id.tfs)
    np.testing.assert_array_equal(by_symbol.expression, by_id.expression)


def test_names_the_mapping_does_not_know_are_refused_before_any_store(root, tmp_path):
    scvelo_output(root / "data/h5ad/Pancreas/pancreas.h5ad", names=[f"gene{i}" for i in range(80)])
    with pytest.raises(InputError, match=r"pancreas.h5ad: none of its 80 var names \(e.g. gene0\) is "
                                         r"an Ensembl id or a symbol of the id mapping"):
        prepare_store(root, config_from_dict(SETTINGS), tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_too_few_tfs_are_refused_before_any_store(root, tmp_path):
    genes = reference_genes()
    names = [*genes.symbol[genes.is_tf][:3], *genes.symbol[~genes.is_tf][:77]]
    scvelo_output(root / "data/h5ad/Pancreas/pancreas.h5ad", names=names)
    with pytest.raises(InputError, match=r"tissue Pancreas: 3 of the 300 TFs of the TF list .* fewer "
                                         r"than data.min_tfs \(10\); the TF list, the id mapping"):
        prepare_store(root, config_from_dict(SETTINGS), tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_a_file_whose_velocity_genes_are_none_is_refused(root, tmp_path):
    path = root / "data/h5ad/Pancreas/pancreas.h5ad"
    adata = anndata.read_h5ad(path)
    adata.var["velocity_genes"] = False
    adata.write_h5ad(path)
    with pytest.raises(InputError, match=r"var\['velocity_genes'\] marks no gene"):
        prepare_store(root, config_from_dict(SETTINGS), tmp_path / "store")


@pytest.mark.parametrize("layout", ["dense", "csr", "csc"])
def test_columns_are_read_a_block_of_rows_at_a_time(tmp_path, monkeypatch, layout):
    """Dense and CSR rows are read 5 at a time here; CSC's columns are read directly."""
    rng = np.random.default_rng(3)
    matrix = rng.poisson(0.4, size=(103, 17)).astype(np.float32)
    stored = {"dense": matrix, "csr": scipy.sparse.csr_matrix(matrix),
              "csc": scipy.sparse.csc_matrix(matrix)}[layout]
    anndata.AnnData(X=stored).write_h5ad(tmp_path / "m.h5ad")
    monkeypatch.setattr(scvelo_input, "CHUNK_BYTES", 5 * 17 * 4)  # 5 rows at a time
    columns = np.array([16, 0, 5])
    with h5py.File(tmp_path / "m.h5ad") as file:
        np.testing.assert_array_equal(scvelo_input.read_columns(file["X"], columns), matrix[:, columns])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["velocity", "unspliced", "spliced", "expression"])
def test_tune_runs_on_scvelo_output(root, tmp_path, capsys, target):
    """Each target with the data settings of its example in tune_configs/."""
    from mtlrank_ray.cli import tune_main
    example = REPO / "tune_configs" / f"target_{target}.yaml"
    data = yaml.safe_load(example.read_text())["data"] if target != "velocity" else {}
    config = write_config(tmp_path / "sweep.yaml", {
        **SETTINGS, "data": {**SETTINGS["data"], **data}, "training": {"epochs": 2, "batch_size": 64},
        "search": {"lambdas": [0.0, 0.01], "replicates": 1}, "asha": {"enabled": False}})
    code = tune_main(["--data", str(root), "--config", str(config), "--out", str(tmp_path / "run"), "-q"])
    assert code == 0, capsys.readouterr().err[-3000:]
    genes = pd.read_csv(tmp_path / "run" / "gene_r2.csv")
    # 16 genes drawn, each with 2 λ and 2 baselines; an abundance target leaves the TFs out
    n = genes.gene.nunique()
    assert set(genes.tissue) == {"Pancreas"} and len(genes) == n * 4
    assert n == 16 if target == "velocity" else 4 <= n < 16
    assert set(genes.target) == {target} and set(pd.read_csv(tmp_path / "run" / "selected.csv").target) == {target}
    assert f"(target: {target})</h1>" in (tmp_path / "run" / "report" / "index.html").read_text()
    network = pd.read_csv(tmp_path / "run" / "network.csv")
    assert network.tf_symbol.isin(reference_genes().symbol).all()
    assert (target == "velocity") or not set(network.gene_symbol) & set(network.tf_symbol)


@pytest.mark.slow
def test_a_notebook_prepares_and_sweeps_an_anndata(written, tmp_path):
    import mtlrank_ray
    genes = reference_genes()
    tf_list = pd.DataFrame({"Ensembl ID": genes.ensembl_id[genes.is_tf].to_numpy()})
    id_map = genes.rename(columns={"symbol": "gene_symbol"})[["ensembl_id", "gene_symbol"]]
    adata = anndata.read_h5ad(written)
    with pytest.raises(InputError, match="needs tf_list= and id_map="):
        mtlrank_ray.prepare(adata, config=SETTINGS, out=tmp_path / "run")
    store = mtlrank_ray.prepare(adata, tf_list=tf_list, id_map=id_map, config=SETTINGS,
                                tissue="Pancreas", out=tmp_path / "run")
    assert store.tissues[["tissue", "status", "genes", "clusters"]].values.tolist() == [["Pancreas", "built", 16, 4]]
    assert len(store.load("Pancreas").genes) == 16
    with pytest.raises(InputError, match=r"training.epochs"):
        mtlrank_ray.tune(store.data_root, config={**SETTINGS, "training": {"epochs": 0}}, out=tmp_path / "run")
    results = mtlrank_ray.tune(store.data_root, out=tmp_path / "run", config={
        **SETTINGS, "training": {"epochs": 2, "batch_size": 64},
        "search": {"lambdas": [0.0, 0.01], "replicates": 1}, "asha": {"enabled": False}})
    assert set(results.gene_r2.model) == {"mtlrank", "lasso", "grnboost2"} and len(results.selected) == 4
    assert results.network.tissue.eq("Pancreas").all() and results.report.is_file()
    first_tf = store.load("Pancreas").tfs[0]
    reference = tmp_path / "reference.csv"
    pd.DataFrame({"tf": first_tf, "gene": store.load("Pancreas").genes}).to_csv(reference, index=False)
    evaluation = results.evaluate(reference)
    assert set(evaluation.method) == {"mtlrank (DeepLIFT)", "abs lasso coefficient", "GRNBoost2 importance",
                                      "abs Pearson"}
    assert (evaluation.genes == 16).all()


def readme_example(containing: str) -> str:
    blocks = [block.split("```")[0] for block in (REPO / "README.md").read_text().split("```python\n")[1:]]
    return next(block for block in blocks if containing in block)


@pytest.mark.slow
def test_readme_notebook_example_runs_as_written(written, tmp_path, monkeypatch):
    """README's "From a notebook", verbatim, on a file scVelo wrote: 500 cells, with
    every setting the example leaves out at its default (min_cells among them)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(written, "pancreas_velocity.h5ad")
    genes = reference_genes()
    pd.DataFrame({"Ensembl ID": genes.ensembl_id[genes.is_tf].to_numpy()}).to_csv("mouse_tfs.csv")
    genes.rename(columns={"symbol": "gene_symbol"})[["ensembl_id", "gene_symbol"]].to_csv("mouse_ids.csv")
    adata = anndata.read_h5ad(written)
    velocity_genes = adata.var_names[adata.var.velocity_genes]
    velocity_genes = velocity_genes[~velocity_genes.str.endswith("-1")]  # no id: left out
    first_tf = next(name for name in adata.var_names if name in set(genes.symbol[genes.is_tf]))
    pd.DataFrame({"tf": first_tf, "gene": velocity_genes}).to_csv("reference_network.csv", index=False)
    example = readme_example("mtlrank_ray.prepare(")
    scope = {}
    exec(compile(example, "README's notebook example", "exec"), scope)
    store, results = scope["store"], scope["results"]
    assert store.tissues.loc[0, "cells"] == adata.n_obs
    assert store.tissues.loc[0, "genes"] == len(velocity_genes)  # every velocity gene: fewer than 500
    assert set(results.gene_r2.model) == {"mtlrank", "lasso", "grnboost2"}
    assert set(results.gene_r2.gene) == set(store.load("Pancreas").genes)
    evaluation = results.evaluate("reference_network.csv")
    assert (evaluation.genes == len(velocity_genes)).all()  # each has the reference's TF


def test_names_are_ids_of_any_species_versioned_or_symbols():
    from mtlrank_ray.data.references import gene_ids
    id_map = pd.DataFrame({"ensembl_id": ["ENSG00000137203", "FBgn0000001", "ENSG00000008196", "ENSG00000000003"],
                           "gene_symbol": ["TFAP2A", "a", "TFAP2B", "TFAP2B"]})
    names = pd.Index(["ENSG00000137203.5", "FBgn0000001", "TFAP2B", "a", "TFAP2B-1"])
    assert gene_ids(names, id_map, "test").tolist() == [
        "ENSG00000137203", "FBgn0000001", "ENSG00000008196", "FBgn0000001", ""]


def test_a_notebooks_h5ad_path_is_linked_not_copied(written, tmp_path):
    import mtlrank_ray
    genes = reference_genes()
    tf_list = pd.DataFrame({"Ensembl ID": genes.ensembl_id[genes.is_tf].to_numpy()})
    id_map = genes.rename(columns={"symbol": "gene_symbol"})[["ensembl_id", "gene_symbol"]]
    store = mtlrank_ray.prepare(written, tf_list=tf_list, id_map=id_map, config=SETTINGS,
                                tissue="Pancreas", out=tmp_path / "run")
    linked = store.data_root / "data/h5ad/Pancreas/cells.h5ad"
    assert linked.is_symlink() and linked.resolve() == Path(written).resolve()
    assert len(store.load("Pancreas").genes) == 16
    again = mtlrank_ray.prepare(written, tf_list=tf_list, id_map=id_map, config=SETTINGS,
                                tissue="Pancreas", out=tmp_path / "run")
    assert again.tissues.status.tolist() == ["reused"]  # the link replaced, the store kept
