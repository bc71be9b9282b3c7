"""data.target and data.tf_input: what the networks predict and from what, read from
files scVelo wrote (its own pipeline, test_scvelo_files.scvelo_output) and from the
seed layout."""

import shutil

import anndata
import h5py
import numpy as np
import pytest
from conftest import SMALL_SETTINGS
from test_scvelo_files import SETTINGS, reference_genes, root, written  # noqa: F401 (fixtures)

from mtlrank_ray.config import config_from_dict
from mtlrank_ray.data import load_tissue, prepare_store
from mtlrank_ray.data.prepare import open_source
from mtlrank_ray.data.scvelo import ScveloFiles
from mtlrank_ray.data.seed_layout import RPKM, SeedLayout
from mtlrank_ray.errors import InputError


def settings(**data):
    return config_from_dict({**SETTINGS, "data": {**SETTINGS["data"], **data}})


def as_written(adata, tissue, names, layer):
    """The columns `names` (Ensembl ids) of X or a layer, by the file's symbols, in the
    file's precision (log10 is taken in it, as the notebook takes it)."""
    symbol_of = dict(zip(reference_genes().ensembl_id, reference_genes().symbol))
    view = adata[:, [symbol_of[n] for n in names]]
    values = view.X if layer is None else view.layers[layer]
    return np.asarray(values.toarray() if hasattr(values, "toarray") else values)


@pytest.mark.parametrize("target, layer", [("unspliced", "Mu"), ("spliced", "Ms"), ("expression", None)])
def test_each_target_is_the_layer_scvelo_wrote_for_the_velocity_genes(root, written, tmp_path, target, layer):
    prepare_store(root, settings(), tmp_path / "velocity")
    prepare_store(root, settings(target=target), tmp_path / target)
    by_velocity, tissue = load_tissue(tmp_path / "velocity", "Pancreas"), load_tissue(tmp_path / target, "Pancreas")
    adata = anndata.read_h5ad(written)
    values = as_written(adata, tissue, tissue.genes, layer)
    expected = values if layer is None else np.log10(values + 1)  # X is log already (SETTINGS)
    np.testing.assert_array_equal(tissue.target, expected.astype(np.float32))
    # The same candidates as velocity's, without the TFs: a TF's abundance is an input
    # (velocity keeps them, as the seed does).
    assert set(by_velocity.genes) & set(by_velocity.tfs) and not set(tissue.genes) & set(tissue.tfs)
    assert list(tissue.genes) == [g for g in by_velocity.genes if g not in set(by_velocity.tfs)]
    symbol_of = dict(zip(reference_genes().ensembl_id, reference_genes().symbol))
    assert adata.var.velocity_genes[[symbol_of[g] for g in tissue.genes]].all()
    np.testing.assert_array_equal(tissue.expression, by_velocity.expression)


def test_smoothed_tf_input_is_scvelos_ms_of_the_tfs(root, written, tmp_path):
    prepare_store(root, settings(tf_input="smoothed"), tmp_path / "store")
    tissue = load_tissue(tmp_path / "store", "Pancreas")
    ms = as_written(anndata.read_h5ad(written), tissue, tissue.tfs, "Ms")
    np.testing.assert_array_equal(tissue.expression, np.log10(ms + 1).astype(np.float32))


def test_a_changed_target_rebuilds_the_store(root, tmp_path):
    first = prepare_store(root, settings(), tmp_path / "store")
    again = prepare_store(root, settings(), tmp_path / "store")
    changed = prepare_store(root, settings(target="spliced"), tmp_path / "store")
    assert [r.status for r in (*first, *again, *changed)] == ["built", "reused", "built"]
    assert changed[0].reason == "changed: setting data.target"


@pytest.mark.parametrize("key, value, layer", [("target", "spliced", "Ms"), ("target", "unspliced", "Mu"),
                                               ("tf_input", "smoothed", "Ms")])
def test_a_missing_layer_is_one_line_naming_the_file_the_layer_and_what_writes_it(
        root, tmp_path, key, value, layer):
    path = root / "data/h5ad/Pancreas/pancreas.h5ad"
    with h5py.File(path, "r+") as file:
        del file[f"layers/{layer}"]
    with pytest.raises(InputError) as error:
        prepare_store(root, settings(**{key: value}), tmp_path / "store")
    assert str(error.value) == (f"{path} has no layer '{layer}' (data.{key}: {value}); scVelo writes it "
                                f"with scvelo.pp.moments: run that on the file first, or choose "
                                f"another data.{key}.")
    assert not (tmp_path / "store").exists()


def test_the_seed_layouts_expression_target_is_its_log_rpkm(atlas, tmp_path):
    prepare_store(atlas, config_from_dict({**SMALL_SETTINGS, "data": {"target": "expression"}}),
                  tmp_path / "store")
    tissue = load_tissue(tmp_path / "store", "Liver")
    with h5py.File(atlas / RPKM) as file:
        genes = file["Liver/ensembl"].asstr()[()].tolist()
        barcodes = file["Liver/barcode"].asstr()[()].tolist()
        rpkm = file["Liver/exp"][()]
    rows = [barcodes.index(b) for b in tissue.barcodes]
    expected = np.log10(rpkm[np.ix_(rows, [genes.index(g) for g in tissue.genes])] + 1)
    np.testing.assert_allclose(tissue.target, expected, rtol=1e-6)
    assert not set(tissue.genes) & set(tissue.tfs)


@pytest.mark.parametrize("key, value", [("target", "spliced"), ("tf_input", "smoothed")])
def test_the_seed_layout_refuses_what_only_scvelo_layers_hold(atlas, tmp_path, key, value):
    """Asked for, or chosen by data.format auto where the folder has no data/h5ad."""
    for data, folder in (({"format": "seed"}, atlas), ({}, tmp_path / "seed_only")):
        if folder != atlas:
            shutil.copytree(atlas, folder, ignore=shutil.ignore_patterns("h5ad"))
        with pytest.raises(InputError, match=rf"^data.{key} {value} needs scVelo's smoothed layers \(Ms, Mu\), "
                                             r"which the seed layout .* does not hold; use .h5ad input"):
            prepare_store(folder, config_from_dict({**SMALL_SETTINGS, "data": {**data, key: value}}),
                          tmp_path / "store")


def test_format_auto_reads_scvelos_layers_where_a_folder_has_both_layouts(atlas):
    """The demo has both: a target only scVelo's layers hold picks data/h5ad, velocity the seed's."""
    pytest.importorskip("scvelo")
    assert isinstance(open_source(atlas, config_from_dict({"data": {"target": "spliced"}})), ScveloFiles)
    assert isinstance(open_source(atlas, config_from_dict({"data": {"tf_input": "smoothed"}})), ScveloFiles)
    assert isinstance(open_source(atlas, config_from_dict({})), SeedLayout)
