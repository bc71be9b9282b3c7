"""Aligned tissues as Ray Datasets: Arrow blocks in the object store.

A tissue's matrices are read from the store (from shared storage such as s3://
by Ray Data's read tasks on any node; from a local folder by the driver, which
puts the blocks itself) and materialized once, before any trial starts, as
three datasets:

- expression: one row per cell, in store order: a float32 column per TF and
  `barcode`;
- velocity: one row per cell, same order: a float32 column per selected gene
  (NaN kept) and `barcode`;
- activity: one row per gene, the mean scores' rows then the sum scores'
  (activity_mean.parquet, activity_sum.parquet): a float32 column per TF and
  `gene`.

A block is a run of consecutive rows, split only where it would pass Ray
Data's target block size (128 MiB by default: about 20,000 cells at 1,600
TFs). The two small index tables (genes with their clusters, TF ids) are read
with pyarrow and put in the object store beside them. The driver keeps only
the references; a trial fetches the blocks (zero-copy from the node's object
store), takes the columns of its cluster's genes and assembles its arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from .cluster_data import ClusterData
from .data.store import aligned_empty, is_uri

DATASETS = {"expression": ("expression",), "velocity": ("velocity",),
            "activity": ("activity_mean", "activity_sum")}
INDEX_TABLES = ("genes", "tfs")


@dataclass(frozen=True)
class TissueBlocks:
    """A tissue's block references: small and hashable, passed to every trial."""
    name: str
    refs: tuple[tuple[str, tuple], ...]  # (table name, ObjectRefs of its blocks in row order)

    def blocks(self, table: str) -> list:
        return list(dict(self.refs)[table])


def materialize_tissue(store: str, tissue: str) -> TissueBlocks:
    """Read a tissue of the store (a local folder or a URI) into the object store.

    A store on shared storage (s3://...) is read by Ray Data's read tasks on any
    node. A local store exists on the driver's node only: the driver reads it
    and puts the blocks itself, asking for no CPU (cluster.yaml's head, where the
    driver runs, has none; Ray Data's tasks would ask for one and could run on
    a node that cannot see the folder)."""
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
    refs += [(name, (ray.put(pq.read_table(f"{folder}/{name}.parquet")),)) for name in INDEX_TABLES]
    return TissueBlocks(tissue, tuple(refs))


def _put_blocks(paths: list[str]) -> tuple:
    """Parquet files as blocks of consecutive rows near Ray Data's target block size."""
    target = ray.data.DataContext.get_current().target_max_block_size
    refs = []
    for path in paths:
        parquet = pq.ParquetFile(path)
        meta = parquet.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        rows = max(1, target * meta.num_rows // max(1, size))
        refs += [ray.put(pa.Table.from_batches([batch.replace_schema_metadata()]))
                 for batch in parquet.iter_batches(rows)]
    return tuple(refs)


def _table(refs: list) -> pa.Table:
    return pa.concat_tables(ray.get(refs))


@functools.lru_cache(maxsize=1)
def _expression(tissue: TissueBlocks) -> tuple[np.ndarray, np.ndarray]:
    """(barcodes, cells x TFs float32) of a tissue; a reused worker keeps the last
    tissue's, so consecutive trials of one tissue assemble it once."""
    tfs = _table(tissue.blocks("tfs")).column("tf").to_pylist()
    tables = ray.get(tissue.blocks("expression"))
    matrix = aligned_empty((sum(t.num_rows for t in tables), len(tfs)))
    start = 0
    for table in tables:
        for j, tf_id in enumerate(tfs):
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
    barcodes, expression = _expression(tissue)
    velocity = _table(tissue.blocks("velocity")).select(["barcode", *members])
    if not np.array_equal(velocity.column("barcode").to_numpy(zero_copy_only=False), barcodes):
        raise RuntimeError(f"tissue {tissue.name}: velocity and expression blocks are not in the "
                           "same cell order")
    tfs = _table(tissue.blocks("tfs")).column("tf").to_pylist()
    activity = _table(tissue.blocks("activity")).to_pandas()
    activity = [part.set_index("gene").loc[members, tfs]
                for part in (activity.iloc[:len(genes)], activity.iloc[len(genes):])]
    return ClusterData(
        genes=members, expression=expression,
        velocity=np.column_stack([velocity.column(g).to_numpy(zero_copy_only=False)
                                  for g in members]).astype(np.float32),
        act_mean=activity[0].to_numpy(np.float32), act_sum=activity[1].to_numpy(np.float32))


def tissue_clusters(tissue: TissueBlocks) -> list[int]:
    return sorted(pd.unique(_table(tissue.blocks("genes")).column("cluster").to_numpy()).tolist())
