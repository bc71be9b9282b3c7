"""Aligned tissues as Ray Datasets: Arrow blocks in the object store.

A tissue's matrices are read from the store (from shared storage such as s3://
by Ray Data's read tasks on any node; from a local folder by the driver, which
puts the blocks itself) and materialized once, before any trial starts, as
three datasets:

- expression: one row per cell, in store order: a float32 column per TF and
  `barcode`;
- target: one row per cell, same order: a float32 column per selected gene
  (NaN kept) and `barcode`;
- activity: one row per gene, the mean scores' rows then the sum scores'
  (activity_mean.parquet, activity_sum.parquet): a float32 column per TF and
  `gene`.

A block is a run of consecutive rows, split only where it would pass Ray
Data's target block size (128 MiB by default: about 20,000 cells at 1,600
TFs). The two small index tables (genes with their clusters, TF ids) are read
with pyarrow and put in the object store beside them.

Every trial of a tissue reads the whole expression matrix, so one task
assembles it once from the expression blocks as a row-major float32 array
and returns it to the object store, and the blocks are let go: each node then
holds one copy, which the trials, baselines and rankings running there read
zero-copy (the trainer hands it to TensorFlow in place). The driver keeps only
the references; a trial fetches the matrix and its cluster's target columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from ..core.cluster_data import ClusterData
from ..data.store import aligned_empty, is_uri, read_table

DATASETS = {"expression": ("expression",), "target": ("target",),
            "activity": ("activity_mean", "activity_sum")}
INDEX_TABLES = ("genes", "tfs")


@dataclass(frozen=True)
class TissueBlocks:
    """A tissue's object references: small and hashable, passed to every trial."""
    name: str
    refs: tuple[tuple[str, tuple], ...]  # (table name, ObjectRefs of its blocks in row order)
    expression: ray.ObjectRef  # (barcodes, cells x TFs float32 matrix), one object

    def blocks(self, table: str) -> list:
        return list(dict(self.refs)[table])


def materialize_tissue(store: str, tissue: str, cpus: float = 1) -> TissueBlocks:
    """Read a tissue of the store (a local folder or a URI) into the object store.

    A store on shared storage (s3://...) is read by Ray Data's read tasks on any
    node. A local store exists on the driver's node only: the driver reads it
    and puts the blocks itself, asking for no CPU (cluster.yaml's head, where the
    driver runs, has none; Ray Data's tasks would ask for one and could run on
    a node that cannot see the folder). The expression matrix is assembled by a
    task asking for `cpus` (so never on a head with none)."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # blocks in store row order
    folder = f"{store.rstrip('/')}/{tissue}"
    if is_uri(store):
        refs = [(name, tuple(ray.data.read_parquet([f"{folder}/{f}.parquet" for f in files])
                             .materialize().to_arrow_refs()))
                for name, files in DATASETS.items()]
    else:
        refs = [(name, _put_blocks([f"{folder}/{f}.parquet" for f in files]))
                for name, files in DATASETS.items()]
    refs += [(name, (ray.put(read_table(f"{folder}/{name}.parquet")),)) for name in INDEX_TABLES]
    tables = dict(refs)
    # Wait for the matrix, so the expression blocks can go before any trial starts.
    expression = _assemble_expression.options(num_cpus=cpus).remote(tables["tfs"], tables["expression"])
    ray.wait([expression], fetch_local=False)
    return TissueBlocks(tissue, tuple((n, r) for n, r in refs if n != "expression"), expression)


def _put_blocks(paths: list[str]) -> tuple:
    """Parquet files as blocks of consecutive rows near Ray Data's target block size."""
    target = ray.data.DataContext.get_current().target_max_block_size
    refs = []
    for path in paths:
        with pq.ParquetFile(path) as parquet:
            meta = parquet.metadata
            size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            rows = max(1, target * meta.num_rows // max(1, size))
            refs += [ray.put(pa.Table.from_batches([batch.replace_schema_metadata()]))
                     for batch in parquet.iter_batches(rows)]
    return tuple(refs)


def _table(refs: list) -> pa.Table:
    return pa.concat_tables(ray.get(refs))


@ray.remote(max_retries=3)
def _assemble_expression(tfs: tuple, blocks: tuple) -> tuple[np.ndarray, np.ndarray]:
    return expression_matrix(list(tfs), list(blocks))


def expression_matrix(tfs: list, blocks: list) -> tuple[np.ndarray, np.ndarray]:
    """(barcodes, cells x TFs float32, 64-byte aligned) from the expression blocks."""
    tf_ids = _table(tfs).column("tf").to_pylist()
    tables = ray.get(blocks)
    matrix = aligned_empty((sum(t.num_rows for t in tables), len(tf_ids)))
    start = 0
    for table in tables:
        for j, tf_id in enumerate(tf_ids):
            matrix[start:start + table.num_rows, j] = table.column(tf_id).to_numpy(zero_copy_only=False)
        start += table.num_rows
    barcodes = np.concatenate([t.column("barcode").to_numpy(zero_copy_only=False) for t in tables])
    return barcodes, matrix


def cluster_data(tissue: TissueBlocks, cluster: int) -> ClusterData:
    """One cluster's training data, from the tissue's blocks."""
    genes = _table(tissue.blocks("genes")).to_pandas()
    members = genes.loc[genes["cluster"] == cluster, "gene"].tolist()
    if not members:
        raise ValueError(f"tissue {tissue.name} has no cluster {cluster}")
    barcodes, expression = ray.get(tissue.expression)  # zero-copy: the node's one copy
    target = _table(tissue.blocks("target")).select(["barcode", *members])
    if not np.array_equal(target.column("barcode").to_numpy(zero_copy_only=False), barcodes):
        raise RuntimeError(f"tissue {tissue.name}: target and expression blocks are not in the "
                           "same cell order")
    tfs = tissue_tfs(tissue).tolist()
    activity = _table(tissue.blocks("activity")).to_pandas()
    activity = [part.set_index("gene").loc[members, tfs]
                for part in (activity.iloc[:len(genes)], activity.iloc[len(genes):])]
    return ClusterData(
        genes=members, expression=expression,
        target=np.column_stack([target.column(g).to_numpy(zero_copy_only=False)
                                  for g in members]).astype(np.float32),
        act_mean=activity[0].to_numpy(np.float32), act_sum=activity[1].to_numpy(np.float32))


def tissue_clusters(tissue: TissueBlocks) -> list[int]:
    return sorted(pd.unique(_table(tissue.blocks("genes")).column("cluster").to_numpy()).tolist())


def tissue_tfs(tissue: TissueBlocks) -> np.ndarray:
    """The tissue's TF ids in the expression matrix's column order."""
    return _table(tissue.blocks("tfs")).column("tf").to_numpy(zero_copy_only=False)
