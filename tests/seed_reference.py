"""The seed notebook's data steps, line by line, as the reference `prepare` must match.

Copied from the notebook (steps 2-5: load, select genes, cluster, keep TFs,
reorder and build activity matrices) with only what is needed to run it:
- paths are joined to a data root instead of the working directory;
- `comm_tissues` / `common_tissues` (undefined in the notebook) are the tissues
  in both HDF5 files and the requested ones;
- `str.replace` is given `regex=True`, the default of the pandas the notebook
  was written for (pandas 2 changed it to False);
- thresholds, gene count, cluster count and seed are parameters, and
  KMeansConstrained gets `random_state=seed` (the notebook's is unseeded).
"""

import os

import h5py
import numpy as np
import pandas as pd
from k_means_constrained import KMeansConstrained


def notebook_prepare(root, tissues, num_genes=500, num_samples=4000, liver_samples=1000,
                     n_clusters=20, seed=1000):
    root = str(root)

    # Step 2: read RPKM and velocity, then TF activity, then the id mapping.
    rpkm = dict()
    with h5py.File(os.path.join(root, 'data/processed/rpkm/rpkm.hdf5'), 'r') as f:
        for tissue in f.keys():
            rpkm[tissue] = pd.DataFrame(np.log10(np.array(f[tissue]['exp']) + 1),
                                        index=np.array(f[tissue]['barcode']).astype(str),
                                        columns=np.array(f[tissue]['ensembl']).astype(str))

    velo = dict()
    with h5py.File(os.path.join(root, 'data/processed/velo/velo.hdf5'), 'r') as f:
        for tissue in f.keys():
            velo[tissue] = pd.DataFrame(np.array(f[tissue]['velo']),
                                        index=np.array(f[tissue]['barcode']).astype(str),
                                        columns=np.array(f[tissue]['ensembl']).astype(str))

    folder = os.path.join(root, "data/tf_activity/")
    tf_gene_mat_mean = dict()
    for filename in os.listdir(folder + "mean_tf/"):
        tissue = "_".join(filename.split("_")[:-1])
        tf_gene_mat_mean[tissue] = pd.read_csv("{}/mean_tf/{}".format(folder, filename), index_col=0).transpose()
        tf_gene_mat_mean[tissue].fillna(0, inplace=True)

    tf_gene_mat_sum = dict()
    for filename in os.listdir(folder + "sum_tf/"):
        tissue = "_".join(filename.split("_")[:-1])
        tf_gene_mat_sum[tissue] = pd.read_csv("{}/sum_tf/{}".format(folder, filename), index_col=0).transpose()
        tf_gene_mat_sum[tissue].fillna(0, inplace=True)
        tf_gene_mat_sum[tissue] = np.log2(tf_gene_mat_sum[tissue] + 1)

    ensembl_to_symbol = pd.read_csv(os.path.join(root, "data/raw/id_mapping/ensembl_to_symbol.csv"), index_col=0)
    ensembl_to_symbol = ensembl_to_symbol.loc[~ensembl_to_symbol["ensembl_id"].duplicated(), :]
    ensembl_to_symbol.index = ensembl_to_symbol["ensembl_id"]

    comm_tissues = common_tissues = [t for t in tissues if t in rpkm and t in velo]

    # Step 3: select genes.
    l1_res = pd.read_csv(os.path.join(root, "results/r2/lasso_r2.csv"), index_col=0)
    l1_res["tissue"] = l1_res['tissue'].str.replace(r'\s+', "_", regex=True)
    l1_res["tissue"] = l1_res['tissue'].str.replace(r'\(', "", regex=True)
    l1_res["tissue"] = l1_res['tissue'].str.replace(r'\)', "", regex=True)

    selected_genes = dict()
    for tissue, df in l1_res.groupby("tissue"):
        if tissue in comm_tissues:
            sample_counts = (~velo[tissue].isna()).sum(axis=0)
            if tissue == "Liver":
                genes = sample_counts.index[sample_counts > liver_samples].values
            else:
                genes = sample_counts.index[sample_counts > num_samples].values
            genes = np.intersect1d(rpkm[tissue].columns, genes)
            df = df.loc[df["gene_ensembl"].isin(genes), ]
            np.random.seed(seed)
            if num_genes < df.shape[0]:
                idx = np.random.choice(np.arange(df.shape[0]), size=num_genes, replace=False)
            else:
                idx = np.arange(df.shape[0])
            selected_genes[tissue] = df.iloc[idx, ]["gene_ensembl"].values

    # Step 4: cluster.
    cluster_labels = dict()
    for tissue in comm_tissues:
        mat = velo[tissue].loc[:, selected_genes[tissue]].values
        na_mask = np.isnan(mat).astype(int)
        mean_mat = np.nanmean(mat, axis=0).reshape(1, -1) * na_mask
        mat = np.nan_to_num(mat, nan=0)
        mat = mat + mean_mat
        mat = pd.DataFrame(mat, columns=velo[tissue].loc[:, selected_genes[tissue]].columns)
        cluster_labels[tissue] = KMeansConstrained(
            n_clusters=n_clusters, size_min=int(mat.shape[1] / n_clusters),
            size_max=np.ceil(mat.shape[1] / n_clusters), random_state=seed).fit_predict(mat.values.T)
        cluster_labels[tissue] = pd.DataFrame(cluster_labels[tissue], index=mat.columns, columns=["cluster"])

    # Keep only the TFs as columns of the rpkm matrix.
    tf_list = pd.read_csv(os.path.join(root, "data/raw/tf/tf_list.csv"), index_col=0)
    for tissue in common_tissues:
        use_tfs = rpkm[tissue].columns.intersection(tf_list["Ensembl ID"])
        rpkm[tissue] = rpkm[tissue].loc[:, use_tfs]

    # Step 5: common TFs and genes, orders, activity matrices.
    act_mat_sum = dict()
    act_mat_mean = dict()
    for tissue in comm_tissues:
        tfmat_cols = pd.DataFrame(tf_gene_mat_mean[tissue].columns.values, columns=['tfmat_cols'])
        comm_tfs = ensembl_to_symbol.merge(how='left', left_on='gene_symbol',
                                           right_on="tfmat_cols", right=tfmat_cols)
        comm_tfs = comm_tfs.loc[~comm_tfs['tfmat_cols'].isna(), ]
        comm_tfs = comm_tfs.loc[comm_tfs["ensembl_id"].isin(rpkm[tissue].columns), ]

        tfmat_rows = pd.DataFrame(tf_gene_mat_mean[tissue].index.values, columns=['tfmat_rows'])
        comm_genes = ensembl_to_symbol.merge(how='left', left_on='gene_symbol',
                                             right_on="tfmat_rows", right=tfmat_rows)
        comm_genes = comm_genes.loc[~comm_genes['tfmat_rows'].isna(), ]
        comm_genes = comm_genes.loc[comm_genes["ensembl_id"].isin(velo[tissue].columns), ]

        tf_order = pd.concat([comm_tfs['ensembl_id'], pd.Series(np.setdiff1d(rpkm[tissue].columns, comm_tfs['ensembl_id']))])
        gene_order = pd.concat([comm_genes['ensembl_id'], pd.Series(np.setdiff1d(velo[tissue].columns, comm_genes['ensembl_id']))])

        rpkm[tissue] = rpkm[tissue].loc[:, tf_order]
        velo[tissue] = velo[tissue].loc[:, gene_order]

        act_mat_sum[tissue] = np.zeros((velo[tissue].shape[1], rpkm[tissue].shape[1]))
        act_mat_mean[tissue] = np.zeros((velo[tissue].shape[1], rpkm[tissue].shape[1]))

        act_mat_sum[tissue][:comm_genes.shape[0], :][:, :comm_tfs.shape[0]] = tf_gene_mat_sum[tissue].loc[comm_genes['tfmat_rows'], comm_tfs['tfmat_cols']]
        act_mat_mean[tissue][:comm_genes.shape[0], :][:, :comm_tfs.shape[0]] = tf_gene_mat_mean[tissue].loc[comm_genes['tfmat_rows'], comm_tfs['tfmat_cols']]

        act_mat_sum[tissue] = pd.DataFrame(act_mat_sum[tissue], index=gene_order, columns=tf_order)
        act_mat_mean[tissue] = pd.DataFrame(act_mat_mean[tissue], index=gene_order, columns=tf_order)

    return {tissue: {"selected_genes": selected_genes[tissue],
                     "cluster_labels": cluster_labels[tissue],
                     "rpkm": rpkm[tissue], "velo": velo[tissue],
                     "act_mat_mean": act_mat_mean[tissue], "act_mat_sum": act_mat_sum[tissue]}
            for tissue in comm_tissues}
