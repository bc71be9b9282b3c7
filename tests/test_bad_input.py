"""Each input a user can get wrong: one clear message, exit status 2, no store."""

import logging
import re
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from mtlrank_ray.cli import main
from mtlrank_ray.config import load_config
from mtlrank_ray.data import load_tissue, prepare_store
from mtlrank_ray.errors import InputError

RPKM = "data/processed/rpkm/rpkm.hdf5"
VELO = "data/processed/velo/velo.hdf5"


def prepare_fails(atlas, config, tmp_path, capsys, *extra):
    store = tmp_path / "runs" / "default" / "store"  # where tune.py keeps a first run's store
    code = main(["prepare", "--data", str(atlas), "--config", str(config), "--out", str(store),
                 *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written, no empty run folder
    (message,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return message


def replace_dataset(path, name, values):
    with h5py.File(path, "a") as f:
        del f[name]
        f.create_dataset(name, data=values)


def test_missing_file(atlas, small_config, tmp_path, capsys):
    (atlas / VELO).unlink()
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert "velo.hdf5 does not exist" in message


def test_missing_reference_table(atlas, small_config, tmp_path, capsys):
    (atlas / "data/raw/tf/tf_list.csv").unlink()
    assert "TF list" in prepare_fails(atlas, small_config, tmp_path, capsys)


def test_unknown_tissue(atlas, small_config, tmp_path, capsys):
    message = prepare_fails(atlas, small_config, tmp_path, capsys, "--tissue", "Heart")
    assert "no tissue 'Heart'" in message and "Kidney_Left, Liver" in message


def test_activity_files_without_hdf5_group(atlas, small_config, tmp_path, capsys):
    with h5py.File(atlas / RPKM, "a") as f:
        del f["Liver"]
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert "rpkm.hdf5 has no group 'Liver'" in message and "--tissue" in message


def test_hdf5_group_without_activity_files(atlas, small_config, tmp_path, capsys):
    for kind in ("mean", "sum"):
        (atlas / f"data/tf_activity/{kind}_tf/Liver_{kind}.csv").unlink()
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert "tissue Liver has no activity files" in message
    # The complete tissue alone still prepares.
    assert main(["prepare", "--data", str(atlas), "--config", str(small_config),
                 "--out", str(tmp_path / "kidney"), "--tissue", "Kidney_Left"]) == 0


def test_mean_activity_without_sum(atlas, small_config, tmp_path, capsys):
    (atlas / "data/tf_activity/sum_tf/Liver_sum.csv").unlink()
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert "Liver_mean.csv" in message and "sum_tf" in message


def test_velocity_barcodes_in_another_order_are_aligned(atlas, small_config, tmp_path):
    with h5py.File(atlas / VELO, "a") as f:
        barcodes, velo = f["Liver/barcode"][()], f["Liver/velo"][()]
    order = np.random.default_rng(0).permutation(len(barcodes))
    replace_dataset(atlas / VELO, "Liver/barcode", barcodes[order])
    replace_dataset(atlas / VELO, "Liver/velo", velo[order])
    prepare_store(atlas, load_config(small_config), tmp_path / "store", tissues="Liver")
    tissue = load_tissue(tmp_path / "store", "Liver")
    with h5py.File(atlas / RPKM) as f:
        assert list(tissue.barcodes) == list(f["Liver/barcode"][()].astype(str))
    with h5py.File(atlas / VELO) as f:
        genes = f["Liver/ensembl"][()].astype(str)
    by_barcode = pd.DataFrame(velo, index=barcodes.astype(str), columns=genes)
    expected = by_barcode.loc[tissue.barcodes, tissue.genes].to_numpy(np.float32)
    np.testing.assert_array_equal(tissue.target, expected)


def test_partly_overlapping_barcodes_keep_common_cells(atlas, small_config, tmp_path, caplog):
    with h5py.File(atlas / VELO, "a") as f:
        barcodes, velo = f["Liver/barcode"][()], f["Liver/velo"][()]
    replace_dataset(atlas / VELO, "Liver/barcode", barcodes[10:])
    replace_dataset(atlas / VELO, "Liver/velo", velo[10:])
    with caplog.at_level(logging.WARNING):
        prepare_store(atlas, load_config(small_config), tmp_path / "store", tissues="Liver")
    assert "10 cells appear in only one" in caplog.text
    assert list(load_tissue(tmp_path / "store", "Liver").barcodes) == list(barcodes[10:].astype(str))


def test_barely_overlapping_barcodes(atlas, small_config, tmp_path, capsys):
    with h5py.File(atlas / VELO, "a") as f:
        barcodes = f["Liver/barcode"][()].astype(str)
    renamed = [b if i < 20 else f"other-{b}" for i, b in enumerate(barcodes)]
    replace_dataset(atlas / VELO, "Liver/barcode", np.array(renamed, dtype="S"))
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert "tissue Liver: only 20 of 250 expression barcodes" in message
    assert "velo.hdf5" in message and "min_barcode_overlap" in message


@pytest.mark.parametrize("path, dataset, expected", [
    (RPKM, "Liver/barcode", "rpkm.hdf5 [Liver]: 1 duplicate barcodes"),
    (VELO, "Kidney_Left/ensembl", "velo.hdf5 [Kidney_Left]: 1 duplicate gene ids"),
])
def test_duplicate_ids(atlas, small_config, tmp_path, capsys, path, dataset, expected):
    with h5py.File(atlas / path, "a") as f:
        ids = f[dataset][()]
    ids[3] = ids[2]
    replace_dataset(atlas / path, dataset, ids)
    assert expected in prepare_fails(atlas, small_config, tmp_path, capsys)


def test_shape_mismatch(atlas, small_config, tmp_path, capsys):
    with h5py.File(atlas / RPKM, "a") as f:
        genes = f["Liver/ensembl"][()]
    replace_dataset(atlas / RPKM, "Liver/ensembl", genes[:-1])
    assert "must be cells x genes" in prepare_fails(atlas, small_config, tmp_path, capsys)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -5.0])
def test_bad_expression_values(atlas, small_config, tmp_path, capsys, bad):
    with h5py.File(atlas / RPKM, "a") as f:
        f["Liver/exp"][3, :] = bad  # every column: TFs included
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert message.startswith("error: ") and "rpkm.hdf5 [Liver/exp]" in message
    assert ("NaN or infinite" in message) if np.isnan(bad) or np.isinf(bad) else ("negative" in message)


def test_infinite_velocity(atlas, small_config, tmp_path, capsys):
    with h5py.File(atlas / VELO, "a") as f:
        f["Liver/velo"][0, 0] = np.inf
    assert "infinite" in prepare_fails(atlas, small_config, tmp_path, capsys)


def test_gene_without_velocity_is_reported_and_skipped(atlas, small_config, tmp_path, caplog):
    with h5py.File(atlas / VELO, "a") as f:
        gene = f["Liver/ensembl"][0].decode()
        f["Liver/velo"][:, 0] = np.nan
    with caplog.at_level(logging.WARNING):
        prepare_store(atlas, load_config(small_config), tmp_path / "store", tissues="Liver")
    assert f"tissue Liver: 1 genes in {atlas / VELO} have no velocity in any cell" in caplog.text
    assert gene in caplog.text
    assert gene not in set(load_tissue(tmp_path / "store", "Liver").genes)


def test_fewer_genes_than_clusters(atlas, tmp_path, capsys):
    from conftest import SMALL_SETTINGS, write_config
    settings = {"genes": {**SMALL_SETTINGS["genes"], "min_cells": 395, "min_cell_fraction": 1}}
    message = prepare_fails(atlas, write_config(tmp_path / "c.yaml", settings), tmp_path, capsys)
    with h5py.File(atlas / VELO) as f:
        cells = f["Kidney_Left/velo"].shape[0]  # every barcode in both files
    assert message.startswith(f"error: tissue Kidney_Left ({cells} cells): ")
    assert "fewer than the 4 clusters" in message
    fits = re.search(r"genes.min_cells_by_tissue: \{'Kidney_Left': (\d+)\} fits \((\d+) genes qualify\)\.$",
                     message)
    assert fits, message
    settings["genes"]["min_cells_by_tissue"] = {"Kidney_Left": int(fits[1])}  # as the line says
    prepare_store(atlas, load_config(write_config(tmp_path / "fits.yaml", settings)), tmp_path / "store",
                  tissues="Kidney_Left")
    assert len(load_tissue(tmp_path / "store", "Kidney_Left").genes) == int(fits[2])


def test_lasso_list_without_the_tissue(atlas, small_config, tmp_path, capsys):
    lasso = pd.read_csv(atlas / "results/r2/lasso_r2.csv", index_col=0)
    lasso[lasso.tissue != "Liver"].to_csv(atlas / "results/r2/lasso_r2.csv")
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert "lasso_r2.csv has no rows for tissue Liver" in message
    assert "Kidney_Left" in message


def test_truncated_hdf5(atlas, small_config, tmp_path, capsys):
    data = (atlas / RPKM).read_bytes()
    (atlas / RPKM).write_bytes(data[: len(data) // 2])
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert "rpkm.hdf5 cannot be read as HDF5" in message and "truncated or corrupt" in message


def test_corrupt_hdf5(atlas, small_config, tmp_path, capsys):
    (atlas / VELO).write_bytes(b"this is not an HDF5 file\n" * 100)
    message = prepare_fails(atlas, small_config, tmp_path, capsys)
    assert "velo.hdf5 cannot be read as HDF5" in message


def test_debug_shows_the_traceback(atlas, small_config, tmp_path):
    (atlas / VELO).unlink()
    with pytest.raises(InputError):
        main(["prepare", "--debug", "--data", str(atlas), "--config", str(small_config),
              "--out", str(tmp_path / "store")])


def test_failure_in_a_later_tissue_leaves_an_existing_store_untouched(atlas, small_config, tmp_path, capsys):
    store = tmp_path / "store"
    prepare_store(atlas, load_config(small_config), store)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    with h5py.File(atlas / RPKM, "a") as f:
        f["Kidney_Left/exp"][0, 0] = 1.0  # changes Kidney_Left: it will be rebuilt
        f["Liver/exp"][0, :] = np.nan  # and Liver fails
    code = main(["prepare", "--data", str(atlas), "--config", str(small_config), "--out", str(store)])
    assert code == 2 and "Liver" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert after == before  # Kidney_Left's rebuild was staged, never installed


def test_variable_length_string_ids_read_like_fixed_length(atlas, small_config, tmp_path):
    prepare_store(atlas, load_config(small_config), tmp_path / "fixed", tissues="Liver")
    for path in (RPKM, VELO):
        for name in ("Liver/barcode", "Liver/ensembl"):
            with h5py.File(atlas / path, "a") as f:
                values = f[name][()].astype(str)
                del f[name]
                f.create_dataset(name, data=values.astype(object), dtype=h5py.string_dtype())
    prepare_store(atlas, load_config(small_config), tmp_path / "vlen", tissues="Liver")
    fixed, vlen = load_tissue(tmp_path / "fixed", "Liver"), load_tissue(tmp_path / "vlen", "Liver")
    assert list(vlen.barcodes) == list(fixed.barcodes) and list(vlen.genes) == list(fixed.genes)


def test_forced_h5ad_format_without_h5ad_folder(atlas, tmp_path, capsys):
    from conftest import SMALL_SETTINGS, write_config
    shutil.rmtree(atlas / "data/h5ad", ignore_errors=True)  # the demo's counts files, where scVelo is
    config = write_config(tmp_path / "c.yaml", {**SMALL_SETTINGS, "data": {"format": "h5ad"}})
    assert "data/h5ad does not exist" in prepare_fails(atlas, config, tmp_path, capsys)


def test_data_folder_without_inputs(tmp_path, small_config, capsys):
    (tmp_path / "empty").mkdir()
    message = prepare_fails(tmp_path / "empty", small_config, tmp_path, capsys)
    assert "holds neither the seed layout" in message and "demo-data" in message


def test_the_notebook_tune_refuses_a_ray_already_started(atlas, tmp_path, monkeypatch):
    import ray

    import mtlrank_ray
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    with pytest.raises(InputError, match=r"Ray is already running .* call ray.shutdown\(\) first"):
        mtlrank_ray.tune(atlas, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_missing_config_is_named_before_a_missing_data_folder(tmp_path, monkeypatch, capsys):
    from mtlrank_ray.cli import tune_main
    monkeypatch.chdir(tmp_path)  # no data/ here either
    assert tune_main(["--config", "tune_configs/nope.yaml"]) == 2
    assert "config file tune_configs/nope.yaml does not exist" in capsys.readouterr().err


def test_a_missing_reference_network_says_what_to_pass(tmp_path, capsys):
    from mtlrank_ray.analysis.evaluation import read_reference
    with pytest.raises(InputError, match="pass a CSV with columns tf, gene and optionally tissue"):
        read_reference(tmp_path / "missing.csv", str(tmp_path / "store"), ["Liver"])
