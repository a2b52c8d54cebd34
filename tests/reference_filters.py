"""Plain NumPy references of the filtering rules dnc, signguard, clustering, clippedclustering.

Float64, per-worker Python loops, written from the definitions (the papers and the public code
named in each jaxbyz module). They never import jaxbyz: the random draws (DnC's coordinate
subsets, SignGuard's block offset) are passed in. Each returns ``(aggregate, accepted indices)``.
Conventions shared with jaxbyz: a row holding NaN/±Inf is never averaged; its DnC score and its
norm count as +Inf; its cosine distance to any row is 2; ties in rankings go to the lower index.
"""

from __future__ import annotations

import math

import numpy as np


def _f64(G: np.ndarray) -> np.ndarray:
    return np.asarray(G, dtype=np.float64)


def _finite_rows(G: np.ndarray) -> list[bool]:
    return [bool(np.all(np.isfinite(row))) for row in _f64(G)]


def _norm(row: np.ndarray) -> float:
    if not np.all(np.isfinite(row)):
        return math.inf
    scale = float(np.max(np.abs(row)))
    return 0.0 if scale == 0 else scale * math.sqrt(float(np.sum((row / scale) ** 2)))


def _mean(rows: list[np.ndarray], d: int) -> np.ndarray:
    return np.mean(rows, axis=0) if rows else np.zeros(d)


# ---------------------------------------------------------------------------- DnC


def dnc(G: np.ndarray, f: int, subsets: np.ndarray, c: float = 1.0):
    """Divide-and-Conquer with the given ``[niters, b]`` coordinate subsets."""
    G = _f64(G)
    n, d = G.shape
    finite = _finite_rows(G)
    removed = math.floor(c * f)
    kept_sets = []
    for r in np.asarray(subsets):
        good = [i for i in range(n) if finite[i]]
        X = G[good][:, r]
        mu = X.mean(axis=0)
        v = np.linalg.svd(X - mu, full_matrices=False)[2][0]
        scores = [float(np.dot(G[i, r] - mu, v) ** 2) if finite[i] else math.inf for i in range(n)]
        order = sorted(range(n), key=lambda i: scores[i])  # stable: ties keep the lower index
        kept_sets.append(set(order[: n - removed]))
    kept = set.intersection(*kept_sets) or kept_sets[0]
    kept = sorted(i for i in kept if finite[i])
    return _mean([G[i] for i in kept], d), kept


# ---------------------------------------------------------------------------- SignGuard


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return 0.5 * (s[(n - 1) // 2] + s[n // 2])


def sign_features(B: np.ndarray) -> np.ndarray:
    B = _f64(B).copy()
    B[np.isnan(B)] = 0.0
    b = B.shape[1]
    F = np.array([[np.sum(row > 0) / b, np.sum(row == 0) / b, np.sum(row < 0) / b] for row in B])
    return F / (F.max(axis=0) + 1e-8)


def estimate_bandwidth(X: np.ndarray, quantile: float) -> float:
    n = X.shape[0]
    k = max(1, int(quantile * n))
    total = 0.0
    for i in range(n):
        total += sorted(float(np.linalg.norm(X[i] - X[j])) for j in range(n))[k - 1]
    return total / n


def mean_shift_largest(X: np.ndarray, h: float, iters: int) -> list[int]:
    """Rows of the most populated flat-kernel mean-shift cluster (seeds: the points)."""
    n = X.shape[0]
    modes, intensity = [], []
    for i in range(n):
        m, count = X[i].copy(), 0
        for _ in range(iters):
            window = [j for j in range(n) if np.linalg.norm(X[j] - m) <= h]
            count = len(window)
            if not window:
                break
            new = X[window].mean(axis=0)
            shift = np.linalg.norm(new - m)
            m = new
            if shift <= 1e-3 * h:
                break
        modes.append(m)
        intensity.append(count)
    ranked = sorted(range(n), key=lambda i: -intensity[i])
    centres = []
    for i in ranked:
        if intensity[i] > 0 and all(np.linalg.norm(modes[i] - c) > h for c in centres):
            centres.append(modes[i])
    members: list[list[int]] = [[] for _ in centres]
    for j in range(n):
        dists = [float(np.linalg.norm(X[j] - c)) for c in centres]
        best = min(range(len(centres)), key=lambda k: dists[k])
        if dists[best] <= h:
            members[best].append(j)
    return max(members, key=len)  # first of the largest


def signguard(
    G: np.ndarray,
    f: int,
    start: int,
    b: int,
    L: float = 0.1,
    R: float = 3.0,
    quantile: float = 0.5,
    bandwidth: float | None = None,
    iters: int = 300,
):
    """SignGuard with the sign block ``G[:, start:start+b]``."""
    G = _f64(G)
    n, d = G.shape
    norms = [_norm(row) for row in G]
    M = _median(norms)
    S1 = {i for i in range(n) if L * M <= norms[i] <= R * M}
    X = sign_features(G[:, start : start + b])
    h = max(estimate_bandwidth(X, quantile), 1e-6) if bandwidth is None else bandwidth
    S2 = set(mean_shift_largest(X, h, iters))
    accepted = sorted(S1 & S2)
    rows = [G[i] * min(1.0, M / norms[i]) if norms[i] > 0 else G[i] for i in accepted]
    return _mean(rows, d), accepted


# ---------------------------------------------------------------------------- clustering


def cosine_distances(G: np.ndarray) -> np.ndarray:
    G = _f64(G)
    n = G.shape[0]
    norms = [_norm(row) for row in G]
    ok = [math.isfinite(norms[i]) and norms[i] > 0 for i in range(n)]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                if ok[i] and ok[j]:
                    cos = float(np.dot(G[i] / norms[i], G[j] / norms[j]))
                    D[i, j] = min(2.0, max(0.0, 1.0 - cos))
                else:
                    D[i, j] = 2.0
    return D


def average_linkage_two_clusters(D: np.ndarray) -> list[list[int]]:
    """UPGMA down to two clusters; each cluster's members in increasing order."""
    n = D.shape[0]
    clusters = [[i] for i in range(n)]
    while len(clusters) > 2:
        best = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                dist = np.mean([D[i, j] for i in clusters[a] for j in clusters[b]])
                if best is None or dist < best[0]:
                    best = (dist, a, b)
        _, a, b = best
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return clusters


def largest(clusters: list[list[int]]) -> list[int]:
    """The larger cluster; on equal sizes the one holding the smaller index."""
    return max(sorted(clusters, key=min), key=len)


def clustering(G: np.ndarray, f: int = 0):
    G = _f64(G)
    finite = _finite_rows(G)
    kept = [i for i in largest(average_linkage_two_clusters(cosine_distances(G))) if finite[i]]
    return _mean([G[i] for i in kept], G.shape[1]), kept


def clippedclustering(G: np.ndarray, f: int = 0, max_tau: float = 1e5):
    G = _f64(G)
    norms = [_norm(row) for row in G]
    tau = min(_median(norms), max_tau)
    kept = [
        i
        for i in largest(average_linkage_two_clusters(cosine_distances(G)))
        if math.isfinite(norms[i])
    ]
    rows = [G[i] * (tau / norms[i] if norms[i] > tau else 1.0) for i in kept]
    return _mean(rows, G.shape[1]), kept
