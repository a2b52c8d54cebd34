"""Plain NumPy references of the spectral rules CAF and SMEA, written from their definitions.

Float64, the ``[d, d]`` covariance matrices formed explicitly and their eigenpairs from
``numpy.linalg.eigh``, subsets from ``itertools.combinations``. They never import jaxbyz.
Conventions shared with jaxbyz (see ``jaxbyz/aggregators/spectral.py``): CAF starts non-finite
rows at weight 0, always evaluates the starting weights, divides by the largest ``τ`` among the
rows still weighted and stops when it is 0; SMEA gives the subsets holding a non-finite row an
infinite eigenvalue; ties go to the first candidate.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def covariance(X: np.ndarray, c: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(weighted mean, weighted covariance ``Σ c_i (x_i - μ)(x_i - μ)ᵀ / Σ c_i``), by a loop."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    c = np.ones(n) if c is None else np.asarray(c, dtype=np.float64)
    mu = sum(c[i] * X[i] for i in range(n)) / c.sum()
    sigma = np.zeros((d, d))
    for i in range(n):
        if c[i] > 0:
            sigma += c[i] * np.outer(X[i] - mu, X[i] - mu)
    return mu, sigma / c.sum()


def top_eigenpair(sigma: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest eigenvalue of a symmetric matrix and a unit eigenvector."""
    values, vectors = np.linalg.eigh(sigma)
    return float(values[-1]), vectors[:, -1]


def one_power_step(sigma: np.ndarray, start: np.ndarray) -> np.ndarray:
    """One power iteration from ``start``, as ByzFL does: ``Σ v_0 / ‖Σ v_0‖``."""
    w = sigma @ (start / np.linalg.norm(start))
    return w / np.linalg.norm(w)


def caf(G: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Covariance-bound-agnostic filter: (mean of smallest top eigenvalue, its weights)."""
    X = np.asarray(G, dtype=np.float64).copy()
    n = X.shape[0]
    finite = np.all(np.isfinite(X), axis=1)
    X[~finite] = 0.0
    c = finite.astype(np.float64)
    best = None  # (λ, μ, c)
    first = True
    while first or c.sum() > n - 2 * f:
        first = False
        mu, sigma = covariance(X, c)
        lam, v = top_eigenpair(sigma)
        if best is None or lam < best[0]:
            best = (lam, mu, c.copy())
        tau = np.array([float((X[i] - mu) @ v) ** 2 for i in range(n)])
        tau_max = max(tau[i] for i in range(n) if c[i] > 0)
        if tau_max == 0:
            break
        c = np.array([c[i] * (1 - tau[i] / tau_max) if c[i] > 0 else 0.0 for i in range(n)])
    return best[1], best[2]


def smea(G: np.ndarray, f: int) -> tuple[np.ndarray, list[int]]:
    """Smallest-maximum-eigenvalue averaging: (aggregate, accepted indices)."""
    X = np.asarray(G, dtype=np.float64)
    n = X.shape[0]
    best, best_lam = None, math.inf
    for subset in itertools.combinations(range(n), n - f):
        rows = X[list(subset)]
        if not np.all(np.isfinite(rows)):
            continue
        lam, _ = top_eigenpair(covariance(rows)[1])
        if best is None or lam < best_lam:
            best, best_lam = subset, lam
    return X[list(best)].mean(axis=0), list(best)
