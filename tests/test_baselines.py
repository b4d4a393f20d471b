import numpy as np
import pytest

from pynn.baselines import LinearRegression


def regression_problem(samples, features, targets, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)) * rng.uniform(0.5, 2.0, features) + rng.normal(size=features)
    coef = rng.normal(size=(targets, features))
    y = x @ coef.T + rng.normal(size=targets) + noise * rng.normal(size=(samples, targets))
    return x.astype(np.float32), y.astype(np.float32)


def reference_fit(x, y, fit_intercept):
    """float64 least squares: (coef [targets, features], intercept [targets])."""
    design = np.asarray(x, np.float64)
    if fit_intercept:
        design = np.hstack([design, np.ones((len(x), 1))])
    solution = np.linalg.lstsq(design, np.asarray(y, np.float64).reshape(len(x), -1), rcond=None)[0]
    if fit_intercept:
        return solution[:-1].T, solution[-1]
    return solution.T, np.zeros(solution.shape[1])


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("samples,features,targets", [(2, 1, 1), (37, 5, 1), (211, 17, 3), (1000, 64, 2)])
def test_linear_regression_matches_float64_lstsq(samples, features, targets, fit_intercept):
    x, y = regression_problem(samples, features, targets)
    model = LinearRegression(fit_intercept=fit_intercept).fit(x, y)
    coef, intercept = reference_fit(x, y, fit_intercept)
    assert model.coef_.shape == (targets, features) and model.coef_.dtype == np.float32
    # float32 normal equations: error ~ cond(X)^2 * eps32 relative to the
    # coefficients; these designs are well conditioned (cond(X) < 10 after centring)
    scale = np.abs(coef).max() + np.abs(intercept).max()
    np.testing.assert_allclose(model.coef_, coef, rtol=0, atol=2e-4 * scale)
    if fit_intercept:
        assert model.intercept_.shape == (targets,)
        np.testing.assert_allclose(model.intercept_, intercept, rtol=0, atol=2e-4 * scale)
    else:
        assert model.intercept_ == 0.0
    prediction = model.predict(x)
    assert prediction.shape == (samples, targets) and prediction.dtype == np.float32
    expected = x.astype(np.float64) @ coef.T + intercept
    np.testing.assert_allclose(prediction, expected, rtol=0, atol=5e-4 * np.abs(expected).max())


def test_one_dimensional_target_has_sklearn_shapes():
    x, y = regression_problem(50, 4, 1)
    model = LinearRegression().fit(x, y[:, 0])
    coef, intercept = reference_fit(x, y[:, 0], True)
    assert model.coef_.shape == (4,) and np.ndim(model.intercept_) == 0
    np.testing.assert_allclose(model.coef_, coef[0], atol=1e-4)
    np.testing.assert_allclose(model.intercept_, intercept[0], atol=1e-4)
    assert model.predict(x).shape == (50,)


def test_exact_fit_and_float64_input():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 3))
    y = x @ np.array([1.5, -2.0, 0.25]) + 4.0
    model = LinearRegression().fit(x, y)
    np.testing.assert_allclose(model.coef_, [1.5, -2.0, 0.25], atol=1e-5)
    np.testing.assert_allclose(model.intercept_, 4.0, atol=1e-5)


def test_rank_deficient_design_gives_minimum_norm_solution():
    x, y = regression_problem(80, 6, 2, seed=4)
    duplicated = np.hstack([x, x[:, :2], np.full((80, 1), 3.0, np.float32)])  # collinear + constant
    model = LinearRegression().fit(duplicated, y)
    assert model.rank_ == 6
    # lstsq's minimum-norm answer; as in scikit-learn, a constant feature is
    # absorbed by the intercept (centring zeroes it) and gets weight 0
    coef, intercept = reference_fit(duplicated[:, :8], y, True)
    np.testing.assert_allclose(model.coef_[:, :8], coef, atol=2e-3)
    np.testing.assert_allclose(model.coef_[:, 8], 0.0, atol=1e-6)
    np.testing.assert_allclose(model.predict(duplicated), duplicated[:, :8] @ coef.T + intercept, atol=2e-3)
    # the duplicated columns share their weight equally, as the minimum norm requires
    np.testing.assert_allclose(model.coef_[:, 0], model.coef_[:, 6], atol=1e-3)


def test_more_features_than_samples_interpolates():
    x, y = regression_problem(5, 12, 1, seed=5)
    model = LinearRegression().fit(x, y)
    np.testing.assert_allclose(model.predict(x), y, atol=1e-3)


def test_linear_regression_bad_input():
    x, y = regression_problem(10, 3, 1)
    with pytest.raises(ValueError, match="LinearRegression.fit: y must be .*got shape"):
        LinearRegression().fit(x, y[:9])
    with pytest.raises(ValueError, match="LinearRegression.fit: x must be 2-D"):
        LinearRegression().fit(x[:, 0], y)
    with pytest.raises(TypeError, match="LinearRegression.fit: x must be a floating-point"):
        LinearRegression().fit(x.astype(np.int64), y)
    with pytest.raises(ValueError, match="at least one sample"):
        LinearRegression().fit(x[:0], y[:0])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="LinearRegression.fit: x must be finite"):
        LinearRegression().fit(bad, y)
    with pytest.raises(ValueError, match="not fitted"):
        LinearRegression().predict(x)
    with pytest.raises(ValueError, match="LinearRegression.predict: x must have 3 features"):
        LinearRegression().fit(x, y).predict(x[:, :2])
    with pytest.raises(TypeError, match="fit_intercept must be a bool"):
        LinearRegression(fit_intercept="yes")
