"""The lasso baseline: sklearn's lasso on the trainer's standardized data and splits."""

import numpy as np
import pytest
from sklearn.linear_model import Lasso
from sklearn.metrics import r2_score

from mtlrank_ray.baseline import LassoFit, fit_lasso
from mtlrank_ray.cluster_data import ClusterData, prepare_splits, split_cells
from mtlrank_ray.config import config_from_dict
from mtlrank_ray.data import load_tissue, prepare_store

from conftest import SMALL_SETTINGS

ALPHAS = [0.1, 0.01, 0.001]


@pytest.fixture(scope="module")
def cluster(small_atlas_template, tmp_path_factory):
    store = tmp_path_factory.mktemp("baseline") / "store"
    prepare_store(small_atlas_template, config_from_dict(SMALL_SETTINGS), store, "Liver")
    data = ClusterData.from_tissue(load_tissue(store, "Liver"), 0)
    assert np.isnan(data.velocity).any(axis=0).any()  # some genes lose cells to NaN velocity
    return data, split_cells(len(data.expression), 0.1, 0.1, 0, 0)


@pytest.mark.parametrize("standardize", ["train", "per_split"])
def test_equals_sklearn_lasso_on_the_trainers_standardized_splits(cluster, standardize):
    data, split = cluster
    fit = fit_lasso(data, split, standardize, ALPHAS)
    splits = prepare_splits(data, split, standardize)
    for g in range(len(data.genes)):
        def features(name):
            s = splits[name].standardization
            return (data.expression[splits[name].cells[g]].astype(float) - s.shift[g]) / s.scale[g]

        models = {alpha: Lasso(alpha=alpha, tol=1e-8, max_iter=100_000).fit(
            features("train"), splits["train"].target[g]) for alpha in ALPHAS}
        val = {alpha: r2_score(splits["val"].target[g], m.predict(features("val")))
               for alpha, m in models.items()}
        best = max(val, key=val.get)
        assert fit.alpha[g] == best
        assert fit.val_r2[g] == pytest.approx(val[best], abs=1e-4)
        assert fit.test_r2[g] == pytest.approx(
            r2_score(splits["test"].target[g], models[best].predict(features("test"))), abs=1e-4)
        np.testing.assert_allclose(fit.coef[g], models[best].coef_, atol=1e-3)
        assert fit.intercept[g] == pytest.approx(models[best].intercept_, abs=1e-3)


def test_the_grid_matters_and_the_fit_round_trips(cluster, tmp_path):
    data, split = cluster
    strong = fit_lasso(data, split, "train", [10.0])  # above every |correlation|: all zero
    assert not strong.coef.any() and (strong.test_r2 <= 0).all()
    fit = fit_lasso(data, split, "train", ALPHAS)
    assert (fit.val_r2 > strong.val_r2).all()
    fit.save(tmp_path / "fit.npz")
    again = LassoFit.load(tmp_path / "fit.npz")
    assert again.genes == fit.genes
    np.testing.assert_array_equal(again.coef, fit.coef)
    np.testing.assert_array_equal(again.alpha, fit.alpha)
