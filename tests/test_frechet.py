import numpy as np
import pytest
import scipy.linalg

from models.frechet import frechet_distance, frechet_distance_between, gaussian_statistics


def sqrtm_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean))


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_non_diagonal_gaussians_match_sqrtm_formula():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    sigma1, sigma2 = random_spd(rng, 8), random_spd(rng, 8)
    got = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert got == pytest.approx(sqrtm_frechet(mu1, sigma1, mu2, sigma2), rel=1e-8)


def test_scaled_covariance_has_exact_distance():
    # sigma2 = c^2 sigma1 -> Tr (sigma1 sigma2)^(1/2) = c Tr sigma1, without any sqrtm
    rng = np.random.default_rng(2)
    mu1, mu2, sigma, c = rng.normal(size=5), rng.normal(size=5), random_spd(rng, 5), 1.7
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(sigma)
    assert frechet_distance(mu1, sigma, mu2, c**2 * sigma) == pytest.approx(expected, rel=1e-10)


def test_random_features_match_sqrtm_computation():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 10))
    b = rng.normal(size=(250, 10)) @ rng.normal(size=(10, 10)) * 0.5 + 0.3
    mu_a, sigma_a = gaussian_statistics(a)
    np.testing.assert_allclose(mu_a, a.mean(axis=0))
    np.testing.assert_allclose(sigma_a, np.cov(a, rowvar=False))
    expected = sqrtm_frechet(*gaussian_statistics(a), *gaussian_statistics(b))
    assert frechet_distance_between(a, b) == pytest.approx(expected, rel=1e-8)


def test_identical_feature_sets_give_zero():
    features = np.random.default_rng(4).normal(size=(200, 16)) * 5 + 2
    assert frechet_distance_between(features, features) == pytest.approx(0.0, abs=1e-9)


def test_singular_covariances_give_the_low_rank_value():
    # N < D: both covariances are singular. With centred features X (S = X^T X / (N - 1)),
    # Tr (S1 S2)^(1/2) is the nuclear norm of X1 X2^T / sqrt((N1 - 1)(N2 - 1)): a small,
    # well-conditioned matrix, so this is an exact reference.
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(12, 40)), rng.normal(size=(15, 40)) * 2 + 1
    xa, xb = a - a.mean(axis=0), b - b.mean(axis=0)
    cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt(11 * 14)
    expected = (
        np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2)
        + np.sum(xa**2) / 11
        + np.sum(xb**2) / 14
        - 2 * cross
    )
    got = frechet_distance_between(a, b)
    assert type(got) is float and np.isfinite(got) and got >= 0
    assert got == pytest.approx(expected, rel=1e-7)  # sqrtm of a singular product: ~1e-8
    trace = np.sum(xa**2) / 11
    assert 0.0 <= frechet_distance_between(a, a) < 1e-6 * trace


def test_distance_grows_with_noise_scale():
    rng = np.random.default_rng(6)
    features, noise = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
    distances = [
        frechet_distance_between(features, features + scale * noise)
        for scale in (0.0, 0.1, 0.3, 1.0, 3.0)
    ]
    assert distances[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(distances) > 0), distances


def test_one_dimensional_features():
    a, b = np.array([[0.0], [2.0], [4.0]]), np.array([[1.0], [2.0]])
    mu, sigma = gaussian_statistics(a)
    assert mu.shape == (1,) and sigma.shape == (1, 1)
    expected = (2.0 - 1.5) ** 2 + (np.sqrt(4.0) - np.sqrt(0.5)) ** 2
    assert frechet_distance_between(a, b) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "features, message",
    [(np.zeros(5), "2-D"), (np.zeros((1, 4)), "at least 2"), (np.zeros((2, 3, 4)), "2-D")],
)
def test_gaussian_statistics_rejects_bad_input(features, message):
    with pytest.raises(ValueError, match=message):
        gaussian_statistics(features)


def test_frechet_distance_rejects_bad_shapes_and_values():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"covariance \[D, D\]"):
        frechet_distance(mu, np.eye(4), mu, sigma)
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(np.array([0.0, np.nan, 0.0]), sigma, mu, sigma)
