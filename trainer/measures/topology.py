"""Geometry and topology of representations, attention patterns and weights, as plain floats.

Everything here is pure computation on arrays (numpy, or torch tensors that are copied to CPU
float64 first): no Lightning, no logging, no global RNG. The callbacks decide when to call these
functions and under which namespace (``topo/...``) to log the results.

Invalid values are never returned as numbers: a metric that comes out NaN or infinite raises
``ValueError`` naming the metric, so that a callback can report the failure instead of logging
garbage that a jump detector would then read as a jump.

Distances are in the units of the point cloud. Hidden states grow in norm during training, so
the persistence totals (``h0_total``, ``h1_total``) move with scale; the rank, dimension and graph
metrics are scale-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from scipy import linalg
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

ArrayLike = np.ndarray | torch.Tensor

#: Facco et al. (2017) discard the largest 10% of neighbour-distance ratios: the tail is dominated
#: by points in sparse regions, where the local-uniformity assumption of TwoNN fails.
TWONN_DISCARD_FRACTION = 0.1


def _to_numpy(x: ArrayLike, dtype: type = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        # Upcast on the torch side: numpy has no bfloat16, which models often compute in.
        x = x.detach().to("cpu", torch.float64 if x.is_floating_point() else torch.int64).numpy()
    return np.asarray(x, dtype=dtype)


def _point_cloud(X: ArrayLike) -> np.ndarray:
    """Validate a point cloud up front, so every metric can assume finite [n, d] data."""
    points = _to_numpy(X)
    if points.ndim != 2:
        raise ValueError(f"point cloud must be 2-D [n, d], got shape {points.shape}")
    if points.shape[0] < 4:
        raise ValueError(f"point cloud needs at least 4 points, got {points.shape[0]}")
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise ValueError(f"point cloud has {bad} points with NaN or inf coordinates")
    return points


def _check_finite(metrics: Mapping[str, float]) -> dict[str, float]:
    bad = sorted(key for key, value in metrics.items() if not np.isfinite(value))
    if bad:
        raise ValueError(f"metrics came out NaN or inf (degenerate input?): {', '.join(bad)}")
    return {key: float(value) for key, value in metrics.items()}


def _spectrum(points: np.ndarray) -> np.ndarray:
    """Singular values of the centred cloud; all zero means every point is the same."""
    singular = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if singular.sum() <= 0.0:
        raise ValueError("point cloud is a single repeated point: its spectrum is empty")
    return singular


def effective_rank(X: ArrayLike) -> float:
    """exp of the entropy of the normalised singular values (Roy & Vetterli 2007).

    A cloud spread evenly over a k-dimensional subspace has effective rank ~k, whatever the
    ambient dimension; it counts the directions the representation actually uses.
    """
    return _effective_rank(_spectrum(_point_cloud(X)))


def _effective_rank(singular: np.ndarray) -> float:
    p = singular / singular.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def participation_ratio(X: ArrayLike) -> float:
    """(sum lambda)^2 / sum lambda^2 over covariance eigenvalues: 1 for a line, d if isotropic.

    It weighs directions by variance rather than by standard deviation, so it is more sensitive
    than the effective rank to a few dominant directions (e.g. outlier features).
    """
    return _participation_ratio(_spectrum(_point_cloud(X)))


def _participation_ratio(singular: np.ndarray) -> float:
    variance = singular**2
    return float(variance.sum() ** 2 / (variance**2).sum())


def twonn_dimension(X: ArrayLike, distances: np.ndarray | None = None) -> float:
    """Intrinsic dimension from the ratio of 2nd to 1st neighbour distances (Facco et al. 2017).

    Under local uniformity mu = r2 / r1 is Pareto with exponent d, so -log(1 - F(mu)) = d log mu;
    d is the slope of that line through the origin, fitted after discarding the top 10% of mu.
    Duplicate points (r1 = 0) carry no information and are dropped.
    """
    points = _point_cloud(X)
    dist = squareform(pdist(points)) if distances is None else distances
    neighbours = np.partition(dist, (1, 2), axis=1)[:, 1:3]
    keep = neighbours[:, 0] > 0
    if keep.sum() < 3:
        raise ValueError("TwoNN needs at least 3 distinct points")
    mu = np.sort(neighbours[keep, 1] / neighbours[keep, 0])
    n = mu.size
    n_fit = max(2, int(np.floor(n * (1.0 - TWONN_DISCARD_FRACTION))))
    log_mu = np.log(mu[:n_fit])
    empirical_cdf = np.arange(1, n_fit + 1) / n
    y = -np.log(1.0 - empirical_cdf)
    denom = float((log_mu**2).sum())
    if denom <= 0.0:
        raise ValueError("TwoNN is undefined: every point is equidistant to its two neighbours")
    return float((log_mu * y).sum() / denom)


def knn_graph(distances: np.ndarray, k: int) -> csr_matrix:
    """Symmetrised (union) k-nearest-neighbour graph as a 0/1 sparse adjacency matrix.

    The union keeps every point's own k neighbours, so no point is isolated; ties at the k-th
    distance are broken by index.
    """
    n = distances.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    masked = distances.copy()
    np.fill_diagonal(masked, np.inf)
    neighbours = np.argpartition(masked, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    directed = csr_matrix((np.ones(n * k), (rows, neighbours.ravel())), shape=(n, n))
    adjacency = directed.maximum(directed.T)
    adjacency.eliminate_zeros()
    return adjacency.tocsr()


def _fiedler_value(adjacency: csr_matrix) -> float:
    """2nd smallest eigenvalue of the normalised Laplacian I - D^-1/2 A D^-1/2 (connected graph).

    Normalised so that it lies in [0, 2] whatever the size and degree: near 0 means the graph
    almost splits in two (a bottleneck), larger means well mixed.
    """
    if adjacency.shape[0] < 2:
        return 0.0
    dense = adjacency.toarray()
    inv_sqrt_degree = 1.0 / np.sqrt(dense.sum(axis=1))
    laplacian = np.eye(dense.shape[0]) - inv_sqrt_degree[:, None] * dense * inv_sqrt_degree
    eigenvalues = linalg.eigh(laplacian, eigvals_only=True, subset_by_index=[0, 1])
    return float(max(eigenvalues[1], 0.0))


def graph_metrics(adjacency: csr_matrix, labels: np.ndarray | None = None) -> dict[str, float]:
    """Components, mean clustering, Fiedler value of the largest component, cross-label edges."""
    n_components, component = connected_components(adjacency, directed=False)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    if adjacency.shape[0] <= 2048:  # dense products are far faster at the monitors' sizes
        dense = adjacency.toarray()
        triangles = ((dense @ dense) * dense).sum(axis=1) / 2
    else:
        triangles = np.asarray((adjacency @ adjacency).multiply(adjacency).sum(axis=1)).ravel() / 2
    possible = degree * (degree - 1) / 2
    clustering = np.divide(triangles, possible, out=np.zeros_like(triangles), where=possible > 0)
    largest = np.flatnonzero(component == np.bincount(component).argmax())
    metrics = {
        "knn_components": float(n_components),
        "knn_clustering": float(clustering.mean()),
        "knn_fiedler": _fiedler_value(adjacency[largest][:, largest]),
    }
    if labels is not None:
        upper = adjacency.tocoo()
        edges = upper.row < upper.col
        crossing = labels[upper.row[edges]] != labels[upper.col[edges]]
        metrics["knn_cross_domain"] = float(crossing.mean())
    return metrics


def h0_persistence(distances: np.ndarray) -> dict[str, float]:
    """Total and largest finite H0 bar of the Vietoris-Rips filtration, from the MST.

    Each MST edge is the distance at which two clusters merge, i.e. one H0 death, so this is the
    exact H0 diagram at a fraction of ripser's cost. The tree is grown with Prim's algorithm on
    the dense matrix (n vector steps; several times faster than a sparse MST at the few hundred
    points the monitors use). Duplicate points contribute zero-length bars, which change neither
    total nor maximum.
    """
    n = distances.shape[0]
    if n < 2:
        return {"h0_total": 0.0, "h0_max": 0.0}
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = distances[0].astype(np.float64, copy=True)
    edges = np.empty(n - 1)
    for i in range(n - 1):
        candidates = np.where(in_tree, np.inf, best)
        j = int(np.argmin(candidates))
        edges[i] = candidates[j]
        in_tree[j] = True
        np.minimum(best, distances[j], out=best)
    return {"h0_total": float(edges.sum()), "h0_max": float(edges.max())}


def h1_persistence(
    X: ArrayLike,
    n_points: int = 256,
    threshold_quantile: float | None = None,
    rng: np.random.Generator | int | None = None,
) -> dict[str, float]:
    """Total and largest H1 bar and the number of H1 bars, via ripser on a random subsample.

    H1 costs cubic time, so it runs on at most ``n_points`` points. ``rng=None`` means seed 0:
    successive evaluations of one probe set then use the same subsample, so a change in H1 is a
    change of the model, not of the sample. ``threshold_quantile`` (e.g. 0.25) stops the filtration
    at that quantile of pairwise distances, which roughly halves the cost; bars still alive there
    are cut at the threshold, so their lengths are lower bounds.
    """
    points = _point_cloud(X)
    generator = np.random.default_rng(0 if rng is None else rng)
    if points.shape[0] > n_points:
        points = points[np.sort(generator.choice(points.shape[0], n_points, replace=False))]
    condensed = pdist(points)
    threshold = np.inf
    if threshold_quantile is not None:
        threshold = float(np.quantile(condensed, threshold_quantile))
    diagram = _rips_h1(condensed, threshold)
    lengths = np.minimum(diagram[:, 1], threshold) - diagram[:, 0]
    lengths = lengths[lengths > 0]
    return {
        "h1_total": float(lengths.sum()),
        "h1_max": float(lengths.max(initial=0.0)),
        "h1_bars": float(lengths.size),
    }


def spectrum_metrics(X: ArrayLike) -> dict[str, float]:
    """The cheap representation metrics of ``X`` [n, d]: ``erank`` and ``pr`` (participation
    ratio), from one SVD. Cheap enough to run every few steps (the fine schedule)."""
    singular = _spectrum(_point_cloud(X))
    return _check_finite({"erank": _effective_rank(singular), "pr": _participation_ratio(singular)})


def neighbourhood_metrics(
    X: ArrayLike,
    labels: ArrayLike | None = None,
    k: int = 10,
    h1: bool = False,
    h1_points: int = 256,
    rng: np.random.Generator | int | None = None,
    h1_threshold_quantile: float | None = None,
) -> dict[str, float]:
    """The expensive representation metrics of ``X`` [n, d], all from pairwise distances:
    ``twonn`` (intrinsic dimension), ``knn_components``, ``knn_clustering``, ``knn_fiedler``
    (largest component), ``knn_cross_domain`` (only with ``labels`` [n], e.g. domain ids: the
    fraction of kNN edges that join two domains, the representation-side bridge density),
    ``h0_total``, ``h0_max``, and with ``h1=True`` ``h1_total``, ``h1_max``, ``h1_bars``. One
    distance matrix serves the kNN graph, TwoNN and H0.

    Raises ``ValueError`` on NaN/inf input or when any metric comes out NaN/inf.
    """
    points = _point_cloud(X)
    label_array = None
    if labels is not None:
        label_array = _to_numpy(labels, dtype=np.int64).ravel()
        if label_array.shape[0] != points.shape[0]:
            raise ValueError(f"{label_array.shape[0]} labels for {points.shape[0]} points")
    distances = squareform(pdist(points))
    metrics = {
        "twonn": twonn_dimension(points, distances),
        **graph_metrics(knn_graph(distances, k), label_array),
        **h0_persistence(distances),
    }
    if h1:
        metrics.update(h1_persistence(points, h1_points, h1_threshold_quantile, rng))
    return _check_finite(metrics)


def _rips_h1(condensed: np.ndarray, threshold: float) -> np.ndarray:
    """The H1 diagram [n_bars, 2] of the Rips filtration of a condensed distance matrix.

    Calls ripser's compiled core directly: ``ripser.ripser`` is a thin wrapper whose module
    imports scikit-learn, seconds of start-up that the first topology evaluation would pay. The
    core takes the upper triangle row by row as float32, which is :func:`pdist`'s order.
    """
    try:
        from pyRipser import doRipsFiltrationDM
    except ImportError:  # a ripser build without the bare extension module: the public API
        from ripser import ripser

        return ripser(squareform(condensed), maxdim=1, thresh=threshold, distance_matrix=True)["dgms"][1]
    result = doRipsFiltrationDM(np.asarray(condensed, dtype=np.float32), 1, threshold, 2, False)
    bars = np.asarray(result["births_and_deaths_by_dim"][1], dtype=np.float64)
    return bars.reshape(-1, 2)


def point_cloud_metrics(
    X: ArrayLike,
    labels: ArrayLike | None = None,
    k: int = 10,
    h1: bool = False,
    h1_points: int = 256,
    rng: np.random.Generator | int | None = None,
    h1_threshold_quantile: float | None = None,
) -> dict[str, float]:
    """All representation metrics of one point cloud ``X`` [n, d] (e.g. hidden states of a layer):
    :func:`spectrum_metrics` and :func:`neighbourhood_metrics` together.

    Raises ``ValueError`` on NaN/inf input or when any metric comes out NaN/inf.
    """
    return {
        **spectrum_metrics(X),
        **neighbourhood_metrics(X, labels, k, h1, h1_points, rng, h1_threshold_quantile),
    }


def attention_metrics(attn: ArrayLike, input_ids: ArrayLike) -> dict[str, float]:
    """Per-head attention entropy and prefix-matching (induction) score.

    ``attn`` [B, H, T, T] holds attention probabilities (rows sum to 1); ``input_ids`` [B, T].

    ``head{h}/entropy``: entropy in nats of each query's attention row, averaged over queries and
    batch. A head that attends uniformly over T keys scores log T; a sharp head scores ~0.

    ``head{h}/prefix_match``: after Olsson et al. (2022), for each query i whose token occurred
    earlier at some j < i, the attention mass on the positions j + 1 that followed those earlier
    occurrences, averaged over such queries. An induction head scores ~1 on repeated sequences.
    When no token repeats the score is undefined (not zero) and its keys are left out.

    Computed with torch ops where the tensors are (on the accelerator during training), with one
    copy of the 2H results to the host at the end: this runs on the fine schedule.
    """
    probs = torch.as_tensor(attn)
    if probs.ndim != 4 or probs.shape[2] != probs.shape[3]:
        raise ValueError(f"attn must be [B, H, T, T], got shape {tuple(probs.shape)}")
    probs = probs.detach().float()
    ids = torch.as_tensor(input_ids).to(probs.device)
    batch, heads, length, _ = probs.shape
    if tuple(ids.shape) != (batch, length):
        raise ValueError(f"input_ids must be [B, T] = {(batch, length)}, got {tuple(ids.shape)}")

    logs = torch.where(probs > 0, probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), torch.zeros_like(probs))
    entropy = -(probs * logs).sum(dim=-1).mean(dim=(0, 2))

    earlier = torch.ones(length, length, dtype=torch.bool, device=probs.device).tril(-1)
    occurrence = (ids[:, :, None] == ids[:, None, :]) & earlier
    follower = torch.zeros_like(occurrence)
    follower[:, :, 1:] = occurrence[:, :, :-1]
    has_earlier = follower.any(dim=-1)
    n_queries = has_earlier.sum()
    mass = (probs * follower[:, None]).sum(dim=-1)
    prefix_match = (mass * has_earlier[:, None]).sum(dim=(0, 2)) / n_queries.clamp_min(1)
    values = torch.cat([entropy, prefix_match, n_queries[None].to(entropy.dtype)]).tolist()
    metrics = {f"head{head}/entropy": values[head] for head in range(heads)}
    if values[-1] > 0:
        metrics.update({f"head{head}/prefix_match": values[heads + head] for head in range(heads)})
    return _check_finite(metrics)


def snapshot(named_params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies of parameters (float32 at least, on their own device), to pass later as
    ``previous``. A copy is needed because the optimizer updates parameters in place; float32
    holds float32 and bfloat16 weights exactly."""
    return {
        name: p.detach().to(torch.promote_types(p.dtype, torch.float32)).clone()
        for name, p in named_params.items()
    }


def weight_metrics(
    named_params: Mapping[str, torch.Tensor],
    previous: Mapping[str, torch.Tensor] | None = None,
    group_of: Callable[[str], str] | None = None,
) -> dict[str, float]:
    """Frobenius norms per parameter group and update ratios ||W_t - W_prev|| / ||W_prev||.

    ``group_of`` maps a parameter name to its group (default: each parameter is its own group);
    a group's norm is the norm of all its parameters concatenated. Keys: ``{group}/norm``,
    ``{group}/update_ratio`` (only with ``previous``, e.g. from :func:`snapshot`), and the same for
    ``total``. The update ratio is the effective learning rate a group actually sees; a spike or
    collapse often marks a phase change. A group whose previous norm is 0 (a zero-initialised
    bias) has no defined ratio, and its ``update_ratio`` key is omitted rather than reported inf.

    The norms are taken where the parameters live, in float32 at least, with one multi-tensor
    kernel per quantity (``torch._foreach_norm``: ~10x fewer ops than a norm per parameter; this
    runs on the fine schedule), and copied to the host once.
    """
    group_of = group_of or (lambda name: name)
    names = list(named_params)
    if not names:
        return {}
    current = [named_params[name].detach() for name in names]
    current = [t if t.dtype in (torch.float32, torch.float64) else t.float() for t in current]
    norms = list(torch._foreach_norm(current))
    if previous is not None:
        before = []
        for name, now in zip(names, current):
            if name not in previous:
                raise ValueError(f"parameter {name!r} is missing from the previous snapshot")
            then = previous[name].detach().to(now.device, now.dtype)
            if then.shape != now.shape:
                raise ValueError(f"parameter {name!r} changed shape {tuple(then.shape)} -> {tuple(now.shape)}")
            before.append(then)
        norms += [*torch._foreach_norm(before), *torch._foreach_norm(torch._foreach_sub(current, before))]
    if len({(n.dtype, n.device) for n in norms}) > 1:
        norms = [n.to(norms[0].device, torch.float64) for n in norms]
    flat = [value**2 for value in torch.stack(norms).double().cpu().tolist()]
    n = len(names)
    flat = [flat[i::n] for i in range(n)]  # per parameter: [norm^2, previous^2, update^2]
    squares: dict[str, float] = {}
    previous_squares: dict[str, float] = {}
    update_squares: dict[str, float] = {}
    for i, name in enumerate(names):
        values = flat[i]
        for group in (group_of(name), "total"):
            squares[group] = squares.get(group, 0.0) + values[0]
            if previous is not None:
                previous_squares[group] = previous_squares.get(group, 0.0) + values[1]
                update_squares[group] = update_squares.get(group, 0.0) + values[2]
    metrics = {f"{group}/norm": np.sqrt(value) for group, value in squares.items()}
    for group, value in previous_squares.items():
        if value > 0:
            metrics[f"{group}/update_ratio"] = np.sqrt(update_squares[group] / value)
    return _check_finite(metrics)
