"""Plain NumPy references (float64, loops) for ``minmax``, ``minsum``, ``fang-krum`` and
``fang-trmean`` (:mod:`jaxbyz.attacks.minmax`, :mod:`jaxbyz.attacks.fang`).

The Min-Max / Min-Sum search is the loop of ``our_attack_dist`` / ``our_attack_score``
(Shejwalkar & Houmansadr, NDSS 2021, repository vrt1shjwlkr/NDSS21-Model-Poisoning) written out
with its own stopping test ``|gamma_succ - gamma| > threshold_diff``; Fang et al.'s attacks
(USENIX Security 2020) follow the paper's definitions mapped to gradients, with the Krum of
``tests/reference_aggregators.py``.
"""

from __future__ import annotations

import math

import numpy as np
import reference_aggregators as ref_rules


def _f64(X: np.ndarray) -> np.ndarray:
    return np.asarray(X, np.float64)


def _sq(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((a - b) ** 2))


# ------------------------------------------------------------------------------------------- #
# Min-Max and Min-Sum


def perturbation(H: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, p)``: ``p`` the unbiased std, ``mu/||mu||`` (0 if ``mu = 0``) or ``sign(mu)``."""
    H = _f64(H)
    mu = H.mean(0)
    if kind == "std":
        return mu, (H.std(0, ddof=1) if len(H) > 1 else np.zeros_like(mu))
    if kind == "sign":
        return mu, np.sign(mu)
    norm = np.linalg.norm(mu)
    return mu, (mu / norm if norm > 0 else np.zeros_like(mu))


def condition(H: np.ndarray, m: np.ndarray, objective: str) -> bool:
    """Min-Max: ``max_i ||m - h_i||² <= max_ij ||h_i - h_j||²``; Min-Sum: ``sum_i ||m - h_i||²
    <= min_i sum_j ||h_i - h_j||²``."""
    H = _f64(H)
    h = len(H)
    if objective == "minmax":
        bound = max(_sq(H[i], H[j]) for i in range(h) for j in range(h))
        return max(_sq(m, H[i]) for i in range(h)) <= bound
    bound = min(sum(_sq(H[i], H[j]) for j in range(h)) for i in range(h))
    return sum(_sq(m, H[i]) for i in range(h)) <= bound


def agnostic_search(
    H: np.ndarray,
    objective: str,
    kind: str,
    gamma_init: float = 10.0,
    threshold: float = 1e-5,
) -> tuple[float, int]:
    """The authors' loop: ``(gamma_succ, number of iterations)``."""
    mu, p = perturbation(H, kind)
    gamma, step, succ, iterations = float(gamma_init), float(gamma_init), 0.0, 0
    while abs(succ - gamma) > threshold:
        if condition(H, mu - gamma * p, objective):
            succ = gamma
            gamma = gamma + step / 2
        else:
            gamma = gamma - step / 2
        step = step / 2
        iterations += 1
    return succ, iterations


def agnostic(
    H: np.ndarray, f: int, objective: str, kind: str, gamma_init: float = 10.0,
    threshold: float = 1e-5,
) -> np.ndarray:  # fmt: skip
    """``f`` copies of ``mu - gamma_succ p``."""
    mu, p = perturbation(H, kind)
    gamma, _ = agnostic_search(H, objective, kind, gamma_init, threshold)
    return np.tile(mu - gamma * p, (f, 1))


# ------------------------------------------------------------------------------------------- #
# Fang et al.: Krum


def fang_lambda_bound(H: np.ndarray, f: int) -> float:
    """``min_i sum_{l in N_i} ||h_l - h_i|| / ((h-f-1) sqrt d) + max_i ||h_i|| / sqrt d``,
    ``N_i`` the ``h - f - 2`` honest rows nearest ``h_i``."""
    H = _f64(H)
    h, d = H.shape
    k = h - f - 2
    term = 0.0
    if k >= 1:
        sums = []
        for i in range(h):
            dist = sorted(math.sqrt(_sq(H[i], H[j])) for j in range(h) if j != i)
            sums.append(sum(dist[:k]))
        term = min(sums) / ((h - f - 1) * math.sqrt(d))
    return term + max(float(np.linalg.norm(H[i])) for i in range(h)) / math.sqrt(d)


def fang_krum(
    H: np.ndarray, f: int, f_decl: int, threshold: float = 1e-5
) -> tuple[float, bool, np.ndarray]:
    """``(lambda, success, rows)``: halve ``lambda`` from the bound while above ``threshold``
    until Krum (``m = 1``, ``f_decl``, rows ``[H; f copies]``) picks a copy of
    ``-lambda sign(mu)``; on failure the rows are ``mu - lambda sign(mu)``."""
    H = _f64(H)
    h = len(H)
    mu = H.mean(0)
    s = np.sign(mu)
    lam = fang_lambda_bound(H, f)
    while lam > threshold:
        G = np.concatenate([H, np.tile(-lam * s, (f, 1))])
        _, chosen = ref_rules.krum(G, f_decl, m=1)
        if chosen[0] >= h:
            return lam, True, np.tile(-lam * s, (f, 1))
        lam *= 0.5
    return lam, False, np.tile(mu - lam * s, (f, 1))


# ------------------------------------------------------------------------------------------- #
# Fang et al.: trimmed mean


def fang_trmean_interval(column: np.ndarray, b: float) -> tuple[float, float]:
    """The interval of one coordinate, from its honest values (``[h]``)."""
    g_max, g_min, mu = float(column.max()), float(column.min()), float(column.mean())
    if mu > 0:  # the honest gradients push the parameter down: send small values
        return (g_min / b, g_min) if g_min > 0 else (b * g_min, g_min)
    if mu < 0:
        return (g_max, b * g_max) if g_max > 0 else (g_max, g_max / b)
    return 0.0, 0.0


def fang_trmean(H: np.ndarray, u: np.ndarray, b: float = 2.0) -> np.ndarray:
    """``lo_j + u_ij (hi_j - lo_j)`` coordinate by coordinate, ``u`` the ``[f, d]`` uniforms."""
    H, u = _f64(H), _f64(u)
    f, d = u.shape
    out = np.zeros((f, d))
    for j in range(d):
        lo, hi = fang_trmean_interval(H[:, j], b)
        for i in range(f):
            out[i, j] = lo + u[i, j] * (hi - lo)
    return out
