"""The aligned store: contents, reuse, rebuilds, and what survives a crash."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_SETTINGS, write_config

from mtlrank_ray.config import load_config
from mtlrank_ray.data import load_tissue, prepare_store, store_tissues
from mtlrank_ray.data.store import package_versions


def test_files_open_with_pandas_and_pyarrow(atlas, small_config, tmp_path):
    prepare_store(atlas, load_config(small_config), tmp_path / "store")
    folder = tmp_path / "store" / "Liver"
    genes = pd.read_parquet(folder / "genes.parquet")
    assert list(genes.columns) == ["gene", "cluster", "n_cells"] and len(genes) == 16
    # Balanced clusters, as k-means-constrained promises: 16 genes in 4 clusters of 4.
    assert sorted(genes.cluster.value_counts()) == [4, 4, 4, 4]
    assert (genes.n_cells > 150).all()
    expression = pq.read_table(folder / "expression.parquet")
    assert "barcode" in expression.column_names
    tfs = pd.read_parquet(folder / "tfs.parquet")
    assert list(tfs.columns) == ["tf", "symbol", "has_activity"]
    frame = pd.read_parquet(folder / "expression.parquet")
    assert frame.index.name == "barcode" and list(frame.columns) == list(tfs.tf)
    assert (frame.dtypes == np.float32).all()
    target = pd.read_parquet(folder / "target.parquet")
    assert list(target.columns) == list(genes.gene) and target.isna().any(axis=None)
    activity = pd.read_parquet(folder / "activity_sum.parquet")
    assert activity.index.name == "gene" and list(activity.index) == list(genes.gene)
    # Scored TFs come first; silent TFs (never expressed) are kept as the notebook keeps them.
    assert tfs.has_activity.iloc[0] and not tfs.has_activity.iloc[-1]
    assert (frame == 0).all().any()


def test_manifest_records_shapes_inputs_config_and_versions(atlas, small_config, tmp_path):
    prepare_store(atlas, load_config(small_config), tmp_path / "store")
    manifest = json.loads((tmp_path / "store/Kidney_Left/manifest.json").read_text())
    tissue = load_tissue(tmp_path / "store", "Kidney_Left")
    assert manifest["shapes"] == {"cells": 400, "tfs": len(tissue.tfs), "genes": 16, "clusters": 4}
    assert set(manifest["inputs"]) == {
        "data/processed/rpkm/rpkm.hdf5", "data/processed/velo/velo.hdf5",
        "data/tf_activity/mean_tf/Kidney_Left_mean.csv", "data/tf_activity/sum_tf/Kidney_Left_sum.csv",
        "data/raw/tf/tf_list.csv", "data/raw/id_mapping/ensembl_to_symbol.csv", "results/r2/lasso_r2.csv"}
    assert all(len(checksum) == 64 for checksum in manifest["inputs"].values())
    assert manifest["config"]["genes"]["n_genes"] == 16
    assert manifest["versions"] == package_versions()
    assert manifest["lasso_list_used"] is True


def test_rerun_reuses_a_current_store(atlas, small_config, tmp_path):
    config = load_config(small_config)
    prepare_store(atlas, config, tmp_path / "store")
    stamp = (tmp_path / "store/Liver/target.parquet").stat().st_mtime_ns
    reports = prepare_store(atlas, config, tmp_path / "store")
    assert [r.status for r in reports] == ["reused", "reused"]
    assert (tmp_path / "store/Liver/target.parquet").stat().st_mtime_ns == stamp


def test_training_settings_do_not_invalidate_the_store(atlas, tmp_path):
    prepare_store(atlas, load_config(write_config(tmp_path / "a.yaml", SMALL_SETTINGS)), tmp_path / "store")
    other = {**SMALL_SETTINGS, "training": {"epochs": 3}, "search": {"lambdas": [0.5]}}
    reports = prepare_store(atlas, load_config(write_config(tmp_path / "b.yaml", other)), tmp_path / "store")
    assert [r.status for r in reports] == ["reused", "reused"]


def test_changed_settings_rebuild_only_the_affected_tissue(atlas, tmp_path):
    prepare_store(atlas, load_config(write_config(tmp_path / "a.yaml", SMALL_SETTINGS)), tmp_path / "store")
    genes = {**SMALL_SETTINGS["genes"], "min_cells_by_tissue": {"Liver": 100}}
    reports = prepare_store(atlas, load_config(write_config(tmp_path / "b.yaml", {"genes": genes})),
                            tmp_path / "store")
    by_tissue = {r.tissue: r for r in reports}
    assert by_tissue["Kidney_Left"].status == "reused"
    assert by_tissue["Liver"].status == "built"
    assert by_tissue["Liver"].reason == "changed: setting genes.min_cells"
    manifest = json.loads((tmp_path / "store/Liver/manifest.json").read_text())
    assert manifest["settings"]["genes"]["min_cells"] == 100


def test_changed_input_rebuilds(atlas, small_config, tmp_path):
    config = load_config(small_config)
    prepare_store(atlas, config, tmp_path / "store")
    with h5py.File(atlas / "data/processed/rpkm/rpkm.hdf5", "a") as f:
        f["Liver/exp"][0, :] += 1.0
    reports = prepare_store(atlas, config, tmp_path / "store", tissues="Liver")
    assert reports[0].status == "built"
    assert reports[0].reason == "changed: input data/processed/rpkm/rpkm.hdf5"
    with h5py.File(atlas / "data/processed/rpkm/rpkm.hdf5") as f:
        cols = f["Liver/ensembl"][()].astype(str)
        raw = pd.Series(f["Liver/exp"][0, :], index=cols)
    tissue = load_tissue(tmp_path / "store", "Liver")
    np.testing.assert_allclose(tissue.expression[0], np.log10(raw[tissue.tfs].to_numpy() + 1), rtol=1e-6)


def test_same_seed_same_store(small_atlas_template, small_config, tmp_path):
    config = load_config(small_config)
    prepare_store(small_atlas_template, config, tmp_path / "a")
    prepare_store(small_atlas_template, config, tmp_path / "b")
    a, b = load_tissue(tmp_path / "a", "Kidney_Left"), load_tissue(tmp_path / "b", "Kidney_Left")
    assert list(a.genes) == list(b.genes)
    np.testing.assert_array_equal(a.clusters, b.clusters)


def test_other_gene_seed_draws_other_genes(small_atlas_template, tmp_path):
    genes = {**SMALL_SETTINGS["genes"], "seed": 1}
    prepare_store(small_atlas_template, load_config(write_config(tmp_path / "a.yaml", SMALL_SETTINGS)), tmp_path / "a")
    prepare_store(small_atlas_template, load_config(write_config(tmp_path / "b.yaml", {"genes": genes})), tmp_path / "b")
    assert list(load_tissue(tmp_path / "a", "Liver").genes) != list(load_tissue(tmp_path / "b", "Liver").genes)


def test_load_tissue_names_what_is_there(atlas, small_config, tmp_path):
    prepare_store(atlas, load_config(small_config), tmp_path / "store", tissues="Liver")
    from mtlrank_ray.errors import InputError
    with pytest.raises(InputError, match=r"holds no prepared tissue 'Heart' \(it has: Liver\)"):
        load_tissue(tmp_path / "store", "Heart")


CRASH = """
import os, sys
from mtlrank_ray.config import load_config
from mtlrank_ray.data import prepare, store
stage = sys.argv[1]
if stage == "write":  # killed while writing a tissue's files
    real = store.write_tissue
    def write_then_die(folder, tissue, manifest):
        folder.mkdir(parents=True)
        (folder / "expression.parquet").write_bytes(b"half")
        os._exit(9)
    store.write_tissue = write_then_die
else:  # killed after the first tissue was installed
    real = store.install
    def install_then_die(staged, target):
        real(staged, target)
        os._exit(9)
    store.install = install_then_die
prepare.prepare_store(sys.argv[2], load_config(sys.argv[3]), sys.argv[4])
"""


@pytest.mark.parametrize("stage", ["write", "install"])
def test_a_killed_prepare_leaves_only_whole_tissues(atlas, small_config, tmp_path, stage):
    store = tmp_path / "store"
    prepare_store(atlas, load_config(small_config), store)
    old = {t: load_tissue(store, t) for t in ("Kidney_Left", "Liver")}
    changed = write_config(tmp_path / "changed.yaml", {"genes": {**SMALL_SETTINGS["genes"], "seed": 5}})
    done = subprocess.run([sys.executable, "-c", CRASH, stage, str(atlas), str(changed), str(store)])
    assert done.returncode == 9
    assert store_tissues(store) == ["Kidney_Left", "Liver"]
    for t in ("Kidney_Left", "Liver"):
        tissue = load_tissue(store, t)  # each tissue is whole: old or new, readable
        if stage == "write" or t == "Liver":
            assert list(tissue.genes) == list(old[t].genes)
        else:
            assert list(tissue.genes) != list(old[t].genes)
    reports = prepare_store(atlas, load_config(changed), store)
    assert sorted(p.name for p in store.iterdir()) == ["Kidney_Left", "Liver"]  # leftovers removed
    assert [r.status for r in reports] == (["built", "built"] if stage == "write" else ["reused", "built"])


def test_a_tissue_missing_a_file_is_rebuilt(atlas, small_config, tmp_path):
    config = load_config(small_config)
    prepare_store(atlas, config, tmp_path / "store")
    (tmp_path / "store/Liver/target.parquet").unlink()
    reports = prepare_store(atlas, config, tmp_path / "store")
    assert [r.status for r in reports] == ["reused", "built"]
    assert (tmp_path / "store/Liver/target.parquet").is_file()


def test_tissue_named_as_in_the_lasso_list(atlas, small_config, tmp_path):
    reports = prepare_store(atlas, load_config(small_config), tmp_path / "store", tissues="Kidney (Left)")
    assert [r.tissue for r in reports] == ["Kidney_Left"]


EXIT_AFTER_READ = """
import io
import sys
import pandas as pd
from mtlrank_ray.data.store import read_parquet
read = read_parquet if sys.argv[1] == "ours" else pd.read_parquet
for path in sys.argv[2:]:
    with open(path, "rb") as file:  # as run storage reads: bytes from S3
        payload = io.BytesIO(file.read())
    for source in (path, payload):
        assert len(read(source, columns=["tissue"])) == 20000
"""


@pytest.mark.slow
def test_a_process_that_reads_tables_and_exits_at_once_exits_cleanly(tmp_path):
    """pandas' read_parquet leaves pyarrow's scan work running after the call returns,
    still holding a Python file object; a process that exits then aborts (SIGABRT).
    Our reads, of a path or of bytes fetched from storage, leave none.
    The same script with pandas' reader is the control: it shows this machine has
    the race, so a clean run of ours means something."""
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(20000, 40)),
                         columns=[f"c{i}" for i in range(40)])
    frame["tissue"] = np.where(np.arange(20000) % 2, "Kidney", "Liver")
    paths = [str(tmp_path / f"table{i}.parquet") for i in range(4)]
    for path in paths:
        frame.to_parquet(path, row_group_size=200)  # many row groups: more scan work

    def exits(reader: str) -> list[subprocess.CompletedProcess]:
        return [subprocess.run([sys.executable, "-c", EXIT_AFTER_READ, reader, *paths],
                               capture_output=True, text=True, timeout=120) for _ in range(20)]

    control = exits("pandas")
    if all(run.returncode == 0 for run in control):
        pytest.skip("pandas' read_parquet never aborted at exit in 20 runs on this machine, "
                    "so a clean run of ours would prove nothing here")
    assert any(run.returncode < 0 for run in control), [run.stderr[-300:] for run in control]
    ours = exits("ours")
    assert [run.returncode for run in ours] == [0] * 20, \
        [run.stderr[-500:] for run in ours if run.returncode]
