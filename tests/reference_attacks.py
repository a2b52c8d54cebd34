"""Plain NumPy references for the attacks, written from the formulas (float64).

Also a faithful re-implementation of the paper's sequential line search (``line_maximize`` in
tools/misc.py of LPD-EPFL/ByzantineMomentum) and small NumPy rules (median, the paper's Krum),
used to check the vectorised search of :mod:`jaxbyz.attacks.adaptive` against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np


def mean_std(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate-wise mean and unbiased standard deviation (float64)."""
    H = np.asarray(H, np.float64)
    return H.mean(0), H.std(0, ddof=1)


def little(H: np.ndarray, f: int, factor: float, negative: bool = False) -> np.ndarray:
    """``mu + s factor sigma``, ``f`` copies."""
    mu, sigma = mean_std(H)
    s = -1.0 if negative else 1.0
    return np.tile(mu + s * factor * sigma, (f, 1))


def z_max(n: int, f_decl: int) -> float:
    """Baruch et al. 2019: ``Phi^-1((n - s)/n)``, ``s = floor(n/2 + 1) - f_decl``."""
    s = math.floor(n / 2 + 1) - f_decl
    return NormalDist().inv_cdf((n - s) / n)


def empire(H: np.ndarray, f: int, factor: float, negative: bool = False) -> np.ndarray:
    """``(1 - eps) mu``, ``eps = factor`` (``-factor`` when negative)."""
    mu, _ = mean_std(H)
    eps = -factor if negative else factor
    return np.tile((1.0 - eps) * mu, (f, 1))


def empire_strict(H: np.ndarray, f: int, epsilon: float) -> np.ndarray:
    """``-epsilon mu`` (the paper's attacks/empire.py)."""
    mu, _ = mean_std(H)
    return np.tile(-epsilon * mu, (f, 1))


def bulyan(
    H: np.ndarray, f: int, factor: float, target_idx: int | str = -1, negative: bool = False
) -> np.ndarray:
    """``mu + s factor e_t`` (``1_d`` for "all")."""
    mu, _ = mean_std(H)
    e = np.ones_like(mu) if target_idx == "all" else np.eye(mu.size)[target_idx]
    return np.tile(mu + (-factor if negative else factor) * e, (f, 1))


def signflip(H: np.ndarray, f: int, scale: float) -> np.ndarray:
    """``-scale mu``."""
    return np.tile(-scale * mean_std(H)[0], (f, 1))


def anticge(H: np.ndarray, f: int, f_decl: int, margin: float) -> np.ndarray:
    """The paper's anti-CGE attack, loop by loop as in its description."""
    H = np.asarray(H, np.float64)
    if f > f_decl:
        return np.full((f, H.shape[1]), np.nan)
    norms = [np.linalg.norm(g) if np.isfinite(np.linalg.norm(g)) else np.inf for g in H]
    normed = sorted(zip(norms, range(len(H)), strict=True))
    p = len(H) - f_decl
    radius = normed[p][0] * (1 - margin)
    a = H[normed[0][1]].copy()
    for _, i in normed[:p]:
        a += H[i]
    if np.linalg.norm(a) > 0:
        a *= -radius / np.linalg.norm(a)
    return np.tile(a, (f, 1))


# ------------------------------------------------------------------------------------------- #
# Rules


def median(G: np.ndarray, f: int) -> np.ndarray:
    """Coordinate-wise median."""
    return np.median(np.asarray(G, np.float64), axis=0)


def krum(G: np.ndarray, f: int, m: int | None = None) -> np.ndarray:
    """The paper's Krum: Euclidean distances, average of the ``m = n - f - 2`` best scores."""
    G = np.asarray(G, np.float64)
    n = len(G)
    m = n - f - 2 if m is None else m
    dist = np.sqrt(np.maximum(((G[:, None, :] - G[None, :, :]) ** 2).sum(-1), 0))
    scores = [np.sort(np.delete(dist[i], i))[: n - f - 1].sum() for i in range(n)]
    best = np.argsort(scores, kind="stable")[:m]
    return G[best].mean(0)


# ------------------------------------------------------------------------------------------- #
# The paper's sequential line search


def paper_line_maximize(
    scape: Callable[[float], float],
    evals: int = 16,
    start: float = 0.0,
    delta: float = 1.0,
    ratio: float = 0.8,
) -> tuple[float, float]:
    """The paper's expansion/contraction search; returns ``(best_x, best_y)``.

    Expansion: from ``start``, try ``best + delta`` and double ``delta`` while it improves
    (strictly). Contraction: shrink ``delta`` by ``ratio`` after each try, stepping from the last
    tried point towards the best one (never below 0). ``evals`` evaluations in all.
    """
    best_x, best_y = start, scape(start)
    left = evals - 1
    prop_x = best_x
    while left > 0:
        prop_x = best_x + delta
        prop_y = scape(prop_x)
        left -= 1
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
            delta *= 2
        else:
            delta *= ratio
            break
    while left > 0:
        if prop_x < best_x:
            prop_x += delta
        else:
            x = prop_x - delta
            while x < 0:
                x = (x + prop_x) / 2
            prop_x = x
        prop_y = scape(prop_x)
        left -= 1
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
        delta *= ratio
    return best_x, best_y
