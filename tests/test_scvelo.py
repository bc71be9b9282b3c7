"""scVelo .h5ad input gives the same aligned tissue as the seed layout."""

import logging
import shutil

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
from conftest import SMALL_SETTINGS

from mtlrank_ray.config import config_from_dict
from mtlrank_ray.data import load_tissue, prepare_store
from mtlrank_ray.errors import InputError


def h5ad_atlas(seed_atlas, root, log_layer=False):
    """The seed atlas rewritten as scVelo output: two sample files per tissue."""
    for shared in ("data/raw", "data/tf_activity", "results"):
        shutil.copytree(seed_atlas / shared, root / shared)
    with h5py.File(seed_atlas / "data/processed/rpkm/rpkm.hdf5") as rpkm, \
            h5py.File(seed_atlas / "data/processed/velo/velo.hdf5") as velo:
        for tissue in rpkm:
            barcodes = rpkm[tissue]["barcode"][()].astype(str)
            genes = rpkm[tissue]["ensembl"][()].astype(str)
            exp = rpkm[tissue]["exp"][()]
            velo_genes = velo[tissue]["ensembl"][()].astype(str)
            velocity = pd.DataFrame(velo[tissue]["velo"][()], columns=velo_genes).reindex(columns=genes)
            half = len(barcodes) // 2
            for i, rows in enumerate((slice(0, half), slice(half, None))):
                x = exp[rows]
                adata = anndata.AnnData(
                    X=scipy.sparse.csr_matrix(x) if i == 0 else x,
                    obs=pd.DataFrame(index=barcodes[rows]),
                    var=pd.DataFrame({"velocity_genes": np.isin(genes, velo_genes)},
                                     index=[f"{g}.{i + 3}" for g in genes]),  # versioned ids
                    layers={"velocity": velocity.to_numpy()[rows]})
                if log_layer:
                    adata.layers["log_rpkm"] = np.log10(x + 1)
                    adata.X = np.zeros_like(x)
                folder = root / "data/h5ad" / tissue / f"sample{i}"
                folder.mkdir(parents=True)
                adata.write_h5ad(folder / "scvelo_annotated.h5ad")
    return root


def test_h5ad_input_matches_the_seed_layout(atlas, tmp_path):
    config = config_from_dict(SMALL_SETTINGS)
    prepare_store(atlas, config, tmp_path / "seed_store")
    root = h5ad_atlas(atlas, tmp_path / "h5ad")
    prepare_store(root, config, tmp_path / "h5ad_store")
    for tissue in ("Kidney_Left", "Liver"):
        seed, ours = load_tissue(tmp_path / "seed_store", tissue), load_tissue(tmp_path / "h5ad_store", tissue)
        assert list(ours.genes) == list(seed.genes) and list(ours.tfs) == list(seed.tfs)
        np.testing.assert_array_equal(ours.clusters, seed.clusters)
        np.testing.assert_array_equal(ours.expression, seed.expression)
        np.testing.assert_array_equal(ours.target, seed.target)
        np.testing.assert_array_equal(ours.activity_sum, seed.activity_sum)
        half = len(seed.barcodes) // 2
        assert ours.barcodes[0] == f"sample0/scvelo_annotated:{seed.barcodes[0]}"
        assert ours.barcodes[half] == f"sample1/scvelo_annotated:{seed.barcodes[half]}"


def test_expression_layer_already_log_scaled(atlas, tmp_path):
    prepare_store(atlas, config_from_dict(SMALL_SETTINGS), tmp_path / "seed_store", tissues="Liver")
    root = h5ad_atlas(atlas, tmp_path / "h5ad", log_layer=True)
    config = config_from_dict({**SMALL_SETTINGS, "data": {"expression_layer": "log_rpkm",
                                                          "expression_is_log": True}})
    prepare_store(root, config, tmp_path / "store", tissues="Liver")
    np.testing.assert_allclose(load_tissue(tmp_path / "store", "Liver").expression,
                               load_tissue(tmp_path / "seed_store", "Liver").expression, rtol=1e-6)


def test_without_activity_files_activity_is_zero_with_a_warning(atlas, tmp_path, caplog):
    root = h5ad_atlas(atlas, tmp_path / "h5ad")
    shutil.rmtree(root / "data/tf_activity")
    with caplog.at_level(logging.WARNING):
        prepare_store(root, config_from_dict(SMALL_SETTINGS), tmp_path / "store", tissues="Liver")
    assert "tissue Liver: no activity files" in caplog.text
    tissue = load_tissue(tmp_path / "store", "Liver")
    assert not tissue.activity_mean.any() and not tissue.activity_sum.any()
    assert list(tissue.tfs) == sorted(tissue.tfs)  # no scored TFs: the notebook's sorted rest


def test_file_without_velocity_layer(atlas, tmp_path):
    root = h5ad_atlas(atlas, tmp_path / "h5ad")
    path = root / "data/h5ad/Liver/sample1/scvelo_annotated.h5ad"
    adata = anndata.read_h5ad(path)
    del adata.layers["velocity"]
    adata.write_h5ad(path)
    with pytest.raises(InputError, match=r"sample1/scvelo_annotated.h5ad lacks layers\['velocity'\]"):
        prepare_store(root, config_from_dict(SMALL_SETTINGS), tmp_path / "store", tissues="Liver")
    assert not (tmp_path / "store").exists()


def test_corrupt_h5ad(atlas, tmp_path):
    root = h5ad_atlas(atlas, tmp_path / "h5ad")
    path = root / "data/h5ad/Liver/sample0/scvelo_annotated.h5ad"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(InputError, match="cannot be read as .h5ad"):
        prepare_store(root, config_from_dict(SMALL_SETTINGS), tmp_path / "store", tissues="Liver")


def test_missing_expression_layer(atlas, tmp_path):
    root = h5ad_atlas(atlas, tmp_path / "h5ad")
    config = config_from_dict({**SMALL_SETTINGS, "data": {"expression_layer": "spliced"}})
    with pytest.raises(InputError, match=r"has no layer 'spliced' \(data.expression_layer\)"):
        prepare_store(root, config, tmp_path / "store", tissues="Liver")
