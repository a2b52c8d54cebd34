"""Plain NumPy references of the aggregation rules, written from their definitions.

Float64, per-worker Python loops, exact distances from differences: slow and obviously right.
They never import jaxbyz. Conventions shared with jaxbyz (documented in its modules): NaN counts
as +Inf in coordinate sorts and non-finite distances as +Inf; ties in rankings go to the lower
row index; ties in "closest to c" go to the smaller value; the median of an even count is the
lower middle value unless ``lower=False``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _f64(G: np.ndarray) -> np.ndarray:
    return np.asarray(G, dtype=np.float64)


def _sorted_columns(G: np.ndarray) -> np.ndarray:
    X = _f64(G).copy()
    X[np.isnan(X)] = np.inf
    return np.sort(X, axis=0)


def _stable_order(keys: np.ndarray) -> list[int]:
    keys = [math.inf if not np.isfinite(k) and not k < 0 else float(k) for k in keys]
    return sorted(range(len(keys)), key=lambda i: keys[i])


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        dist = float(np.linalg.norm(a - b))
    return dist if math.isfinite(dist) else math.inf


def distances(G: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances, +Inf where non-finite, 0 on the diagonal of finite rows."""
    G = _f64(G)
    n = G.shape[0]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = _distance(G[i], G[j])
    return D


# ---------------------------------------------------------------------------- averages


def average(G: np.ndarray, f: int = 0) -> np.ndarray:
    return _f64(G).mean(axis=0)


def median(G: np.ndarray, f: int = 0, lower: bool = True) -> np.ndarray:
    S = _sorted_columns(G)
    n = S.shape[0]
    if lower or n % 2:
        return S[(n - 1) // 2]
    return (S[n // 2 - 1] + S[n // 2]) / 2


def trmean(G: np.ndarray, f: int) -> np.ndarray:
    S = _sorted_columns(G)
    return S[f : S.shape[0] - f].mean(axis=0)


def closest_mean(G: np.ndarray, c: np.ndarray, m: int) -> np.ndarray:
    """Per coordinate, mean of the m values closest to c[j], ties towards the smaller value."""
    X = _f64(G).copy()
    X[np.isnan(X)] = np.inf
    out = np.empty(X.shape[1])
    for j in range(X.shape[1]):
        values = sorted(X[:, j], key=lambda v: (abs(v - c[j]), v))
        out[j] = np.mean(values[:m])
    return out


def phocas(G: np.ndarray, f: int) -> np.ndarray:
    return closest_mean(G, trmean(G, f), G.shape[0] - f)


def meamed(G: np.ndarray, f: int, lower: bool = True) -> np.ndarray:
    return closest_mean(G, median(G, lower=lower), G.shape[0] - f)


# ---------------------------------------------------------------------------- Krum family


def krum_scores(G: np.ndarray, k: int, squared: bool = False) -> list[float]:
    D = distances(G)
    if squared:
        D = D**2
    n = D.shape[0]
    return [sum(sorted(D[i, j] for j in range(n) if j != i)[:k]) for i in range(n)]


def krum(G: np.ndarray, f: int, m: int | None = None, squared: bool = False):
    """Multi-Krum: (aggregate, accepted indices)."""
    n = G.shape[0]
    m = n - f - 2 if m is None else m
    order = _stable_order(np.array(krum_scores(G, n - f - 1, squared)))
    chosen = order[:m]
    return _f64(G)[chosen].mean(axis=0), sorted(chosen)


def bulyan(G: np.ndarray, f: int, m: int | None = None, lower: bool = True):
    """Bulyan over Multi-Krum as the paper's code: (aggregate, accepted indices)."""
    n = G.shape[0]
    m_max = n - f - 2
    m = m_max if m is None else m
    remaining = _stable_order(np.array(krum_scores(G, m)))  # ranked once, never re-scored
    theta = n - 2 * f - 2
    selected, used = [], set()
    for i in range(theta):
        mi = min(m, m_max - i)
        window = remaining[:mi]
        selected.append(_f64(G)[window].mean(axis=0))
        used.update(window)
        remaining = remaining[1:]
    Y = np.stack(selected)
    return closest_mean(Y, median(Y, lower=lower), theta - 2 * f), sorted(used)


def brute(G: np.ndarray, f: int):
    """Minimum-diameter averaging: (aggregate, accepted indices)."""
    n = G.shape[0]
    D = distances(G)
    best, best_diam = None, None
    for subset in itertools.combinations(range(n), n - f):
        diam = max((D[i, j] for i, j in itertools.combinations(subset, 2)), default=0.0)
        if not math.isfinite(diam):
            continue
        if best is None or diam < best_diam:
            best, best_diam = subset, diam
    return _f64(G)[list(best)].mean(axis=0), list(best)


def _mean_of_smallest(G: np.ndarray, keys: np.ndarray, c: int):
    chosen = _stable_order(keys)[:c]
    return _f64(G)[chosen].mean(axis=0), sorted(chosen)


def _sq_norms(X: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.array([float(np.sum(row**2)) for row in X])


def aksel(G: np.ndarray, f: int, mode: str = "mid", lower: bool = True):
    n = G.shape[0]
    c = (n + 1) // 2 if mode == "mid" else n - f
    return _mean_of_smallest(G, _sq_norms(_f64(G) - median(G, lower=lower)), c)


def cge(G: np.ndarray, f: int):
    return _mean_of_smallest(G, _sq_norms(_f64(G)), G.shape[0] - f)


def monna(G: np.ndarray, f: int, pivot) -> tuple:
    p = median(G) if isinstance(pivot, str) else _f64(G)[pivot]
    return _mean_of_smallest(G, _sq_norms(_f64(G) - p), G.shape[0] - f)


# ---------------------------------------------------------------------------- iterative rules


def geomed(G: np.ndarray, f: int, nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-6):
    """Smoothed Weiszfeld from the coordinate-wise median; non-finite rows have weight 0."""
    G = _f64(G)
    finite = [bool(np.all(np.isfinite(row))) for row in G]
    z = median(G)
    for _ in range(max_iter):
        dists = [float(np.linalg.norm(G[i] - z)) if finite[i] else math.inf for i in range(len(G))]
        weights = np.array([1 / max(nu, d) if finite[i] else 0.0 for i, d in enumerate(dists)])
        z_new = sum(w * G[i] for i, w in enumerate(weights) if finite[i]) / weights.sum()
        spread = np.mean([d for d, ok in zip(dists, finite, strict=True) if ok])
        step = float(np.linalg.norm(z_new - z))
        z = z_new
        if step <= tol * spread:
            break
    return z


def cclip(G: np.ndarray, f: int, prev: np.ndarray, tau: float = 10.0, L: int = 1):
    G = _f64(G)
    v = _f64(prev).copy()
    n = G.shape[0]
    for _ in range(L):
        step = np.zeros_like(v)
        for g in G:
            if not np.all(np.isfinite(g)):
                continue
            diff = g - v
            norm = float(np.linalg.norm(diff))
            step += diff * min(1.0, tau / norm) if norm > 0 else 0.0
        v = v + step / n
    return v


# ---------------------------------------------------------------------------- pre-aggregators


def nnm(G: np.ndarray, f: int) -> np.ndarray:
    """Each row replaced by the mean of its n-f nearest rows (itself included, ties: index)."""
    G = _f64(G)
    D = distances(G)
    n = G.shape[0]
    for i in range(n):
        if not math.isfinite(np.sum(G[i] ** 2)):
            D[i, i] = math.inf
    out = np.empty_like(G)
    for i in range(n):
        nearest = _stable_order(D[i])[: n - f]
        with np.errstate(all="ignore"):
            out[i] = G[nearest].mean(axis=0)
    return out


def bucketing(G: np.ndarray, perm: np.ndarray, s: int) -> np.ndarray:
    G = _f64(G)
    return np.stack([G[perm[i : i + s]].mean(axis=0) for i in range(0, len(perm), s)])


def _norm(row: np.ndarray) -> float:
    return float(np.linalg.norm(row))


def clip(G: np.ndarray, c: float) -> np.ndarray:
    G = _f64(G)
    return np.stack([row * min(1.0, c / _norm(row)) if _norm(row) > 0 else row for row in G])


def arc(G: np.ndarray, f: int) -> np.ndarray:
    G = _f64(G)
    n = G.shape[0]
    k = (2 * f * (n - f)) // n  # ⌊2 (f/n) (n - f)⌋ in exact arithmetic
    if k == 0:
        return G
    norms = np.array([_norm(row) for row in G])
    threshold = sorted(norms, reverse=True)[k]
    rows = zip(G, norms, strict=True)
    return np.stack([row * min(1.0, threshold / nr) if nr > 0 else row for row, nr in rows])
