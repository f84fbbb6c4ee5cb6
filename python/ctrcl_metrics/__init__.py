"""ctrcl's segmentation metrics on NumPy arrays, computed in Rust (crates/ctrcl-metrics) with the
GIL released.

Binary masks, medpy's names and definitions (``medpy.metric.binary``; face connectivity):
``dc``, ``jc``, ``hd``, ``hd95``, ``asd``, ``assd``, each with ``voxelspacing``. Label maps:
``evaluate(pred, truth, num_classes, spacing, mode)`` gives every foreground class's Dice,
Jaccard, HD95 and ASD in the ``"transunet"`` convention (TransUNet's ``calculate_metric_percase``:
empty prediction → 0, empty truth → Dice 1 / HD95 0) or the ``"strict"`` one (nnU-Net / MONAI:
NaN where undefined); ``hd95="max"`` takes MONAI's larger directed 95th percentile instead of
medpy's pooled one.
"""

import numpy as np

from . import _native

__all__ = ["dc", "jc", "hd", "hd95", "asd", "assd", "evaluate"]


def _mask(a):
    return np.ascontiguousarray(np.asarray(a).astype(bool, copy=False))


def _pair(result, reference):
    r, t = _mask(result), _mask(reference)
    if r.shape != t.shape:
        raise ValueError(f"the arrays' shapes differ: {r.shape} and {t.shape}")
    return r, t


def _spacing(voxelspacing, ndim):
    if voxelspacing is None:
        return None
    if np.isscalar(voxelspacing):
        return [float(voxelspacing)] * ndim
    return [float(v) for v in voxelspacing]


def _check_connectivity(connectivity):
    if connectivity != 1:
        raise NotImplementedError("only connectivity=1 (face neighbours, medpy's default)")


def dc(result, reference):
    """Dice coefficient; 0 when both masks are empty (as medpy)."""
    tp, fp, fn = _native.overlap(*_pair(result, reference))
    return 2.0 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def jc(result, reference):
    """Jaccard index; NaN when both masks are empty (medpy divides by zero)."""
    tp, fp, fn = _native.overlap(*_pair(result, reference))
    return tp / (tp + fp + fn) if tp + fp + fn else float("nan")


def _distances(result, reference, voxelspacing, connectivity, mode="pooled"):
    _check_connectivity(connectivity)
    r, t = _pair(result, reference)
    if not r.any():
        raise RuntimeError("The first supplied array does not contain any binary object.")
    if not t.any():
        raise RuntimeError("The second supplied array does not contain any binary object.")
    return _native.distances(r, t, _spacing(voxelspacing, r.ndim), mode)


def hd(result, reference, voxelspacing=None, connectivity=1):
    """Hausdorff distance (symmetric maximum surface distance)."""
    return _distances(result, reference, voxelspacing, connectivity)[1]


def hd95(result, reference, voxelspacing=None, connectivity=1):
    """95th percentile of the pooled surface distances of both directions (medpy)."""
    return _distances(result, reference, voxelspacing, connectivity)[0]


def asd(result, reference, voxelspacing=None, connectivity=1):
    """Mean distance from ``result``'s surface to ``reference``'s."""
    return _distances(result, reference, voxelspacing, connectivity)[2]


def assd(result, reference, voxelspacing=None, connectivity=1):
    """Average symmetric surface distance (medpy 0.5: both directions' distances pooled)."""
    return _distances(result, reference, voxelspacing, connectivity)[3]


def evaluate(pred, truth, num_classes=None, spacing=None, mode="transunet", hd95="pooled"):
    """Dice, Jaccard, HD95 and ASD of every foreground class of two integer label maps.

    Returns ``{class: {"dice", "jaccard", "hd95", "asd"}}`` for classes 1..num_classes-1
    (``num_classes`` defaults to the largest label present + 1).
    """
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"the arrays' shapes differ: {p.shape} and {t.shape}")
    for name, a in (("pred", p), ("truth", t)):
        if a.size and (a.min() < 0 or a.max() > 255 or not np.array_equal(a, np.round(a))):
            raise ValueError(f"{name} must hold integer labels 0..255")
    if num_classes is None:
        num_classes = int(max(p.max(initial=0), t.max(initial=0))) + 1
    p8 = np.ascontiguousarray(p.astype(np.uint8))
    t8 = np.ascontiguousarray(t.astype(np.uint8))
    rows = _native.evaluate(p8, t8, max(int(num_classes), 2), _spacing(spacing, p.ndim), mode, hd95)
    keys = ("dice", "jaccard", "hd95", "asd")
    return {c + 1: dict(zip(keys, row)) for c, row in enumerate(rows)}
