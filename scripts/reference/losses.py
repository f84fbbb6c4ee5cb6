#!/usr/bin/env python3
"""Reference values for ctrcl's losses, computed independently with NumPy in float64.

Writes crates/ctrcl-train/tests/data/loss_reference.json, which the Rust tests in
crates/ctrcl-train/tests/loss_reference.rs compare against. Re-run after changing a definition:

    python3 scripts/reference/losses.py

Every formula below follows METHOD.md §3-§5 literally, written without reference to the Rust code.
"""
import json
import math
import os

import numpy as np

rng = np.random.default_rng(20261125)
B, K, H, W = 2, 4, 4, 4

z_a = rng.normal(0.0, 2.0, size=(B, K, H, W))
z_b = rng.normal(0.0, 2.0, size=(B, K, H, W))
y = rng.integers(0, K, size=(B, H, W))
# Make class 3 absent from the batch so the CFCL masking of absent classes is exercised.
y[y == 3] = 1


def onehot(labels, k):
    return np.moveaxis(np.eye(k)[labels], -1, 1)  # [B, K, H, W]


def softmax(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z, axis=1):
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


t = onehot(y, K)


# ---- L_seg (METHOD.md §3): CE mean over pixels; SSL4MIS Dice over all classes, eps 1e-5.
def ce(z, t):
    return float(-(log_softmax(z) * t).sum(axis=1).mean())


def dice(z, t, eps=1e-5):
    p = softmax(z)
    losses = []
    for k in range(z.shape[1]):
        inter = (p[:, k] * t[:, k]).sum()
        losses.append(1 - (2 * inter + eps) / ((p[:, k] ** 2).sum() + (t[:, k] ** 2).sum() + eps))
    return float(np.mean(losses))


def plogp(p):
    return np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0)


def kl(p, q):  # KL(p || q) per pixel over axis 1
    return (plogp(p) - p * np.log(q)).sum(axis=1)


def js(p, q):
    m = 0.5 * (p + q)
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


# ---- RLCL (METHOD.md §4), direction A -> B, written per pixel with explicit loops.
def rlcl(z_teacher, z_student, labels, tau=1.0, delta=0.05, w=(1 / 3, 1 / 3, 1 / 3), mode="adaptive", pixel_weight="none"):
    per_pixel, q, lam = rlcl_pixels(z_teacher, z_student, labels, tau, delta, w, mode)
    if pixel_weight == "certainty":
        wgt = 1 + plogp(q).sum(axis=1) / math.log(K)
        wgt = wgt / wgt.mean()
        per_pixel = per_pixel * wgt
    return float(tau * tau * per_pixel.mean()), lam


def rlcl_pixels(z_teacher, z_student, labels, tau, delta, w, mode):
    """Per-pixel KL(q_A || p_B), the rectified labels q_A and the lambda map."""
    pa = softmax(z_teacher / tau)
    pb = softmax(z_student / tau)
    q = pa.copy()
    lam = np.zeros((B, H, W))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                p = pa[b, :, i, j]
                c = labels[b, i, j]
                p_y = p[c]
                p_max = max(p[k] for k in range(K) if k != c)
                if p_y > p_max:
                    continue  # right pixel: untouched
                if mode == "none":
                    l = 0.0
                elif mode == "hard":
                    l = 1.0
                else:
                    l_min = min(max((p_max - p_y + delta) / (1 - p_y + p_max), 0.0), 1.0)
                    l_a = 1 - p_y
                    l_s = 1 - js(p[None, :, None, None], pb[b, :, i, j][None, :, None, None])[0, 0, 0] / math.log(2)
                    l_c = 1 - (-(plogp(p)).sum()) / math.log(K)
                    l_dyn = min(max(w[0] * l_a + w[1] * l_s + w[2] * l_c, 0.0), 1.0)
                    l = max(l_min, l_dyn)
                lam[b, i, j] = l
                e = np.zeros(K)
                e[c] = 1
                q[b, :, i, j] = (1 - l) * p + l * e
    return kl(q, pb), q, lam


def dml(z_peer, z_own):
    return float(kl(softmax(z_peer), softmax(z_own)).mean())


# ---- Online baselines (METHOD.md §7).
def kdcl(z_own, z_peer, tau=1.0):
    target = softmax((z_own + z_peer) / 2 / tau)
    return float(tau * tau * kl(target, softmax(z_own / tau)).mean())


def kd(z_teacher, z_student, tau=1.0):
    return float(tau * tau * kl(softmax(z_teacher / tau), softmax(z_student / tau)).mean())


def cross_teaching(z_own, z_peer):
    pseudo = onehot(z_peer.argmax(axis=1), z_own.shape[1])
    return dice(z_own, pseudo)


# ---- CFCL (METHOD.md §5) on fixed projected features (the CPM head is a plain conv stack).
D, STRIDE = 5, 2
h, w_ = H // STRIDE, W // STRIDE


def unit(x, axis):
    return x / np.maximum(np.sqrt((x ** 2).sum(axis=axis, keepdims=True)), 1e-6)


f_a = unit(rng.normal(size=(B, D, h, w_)), 1)
f_b = unit(rng.normal(size=(B, D, h, w_)), 1)
frac = t.reshape(B, K, h, STRIDE, w_, STRIDE).mean(axis=(3, 5))  # area downsampling


def perceive(f, frac, temp=0.1):
    fn = f.transpose(0, 2, 3, 1).reshape(-1, D)  # [N, d], pixel order b, y, x
    m = frac.transpose(0, 2, 3, 1).reshape(-1, K)  # [N, K]
    mass = m.sum(axis=0)
    protos = unit((m.T @ fn) / (mass[:, None] + 1e-6), 1)
    logits = fn @ protos.T / temp
    logits = logits + np.where(mass > 0, 0.0, -1e4)[None, :]
    return log_softmax(logits, axis=1), m


def cp_loss(logp, m):
    target = m.argmax(axis=1)
    return float(-logp[np.arange(len(target)), target].mean())


def al_loss(logp_teacher, logp_student):
    p = np.exp(logp_teacher)
    return float((p * (logp_teacher - logp_student)).sum(axis=1).mean())


lp_a, m = perceive(f_a, frac)
lp_b, _ = perceive(f_b, frac)

rl_adaptive, lam = rlcl(z_a, z_b, y)


# ---- Semi-supervised CTRCL (METHOD.md §9) on the same logits, taken as an unlabelled batch.
TAU_U = 0.45
pbar = (softmax(z_a) + softmax(z_b)) / 2
y_hat = pbar.argmax(axis=1)  # [B, H, W]
trusted = (pbar.max(axis=1) >= TAU_U).astype(float)  # [B, H, W]


def rlcl_trusted(z_teacher, z_student, pseudo, mask, pixel_weight="none", tau=1.0):
    """RLCL with the pseudo-label for the ground truth; untrusted pixels contribute 0 and the
    mean is over all pixels; certainty weights normalised to mean 1 over the trusted pixels."""
    per_pixel, q, _ = rlcl_pixels(z_teacher, z_student, pseudo, tau, 0.05, (1 / 3, 1 / 3, 1 / 3), "adaptive")
    per_pixel = per_pixel * mask
    if pixel_weight == "certainty":
        wgt = 1 + plogp(q).sum(axis=1) / math.log(K)
        wgt = wgt / ((wgt * mask).sum() / max(mask.sum(), 1.0))
        per_pixel = per_pixel * wgt
    return float(tau * tau * per_pixel.mean())


frac_u = (onehot(y_hat, K) * trusted[:, None]).reshape(B, K, h, STRIDE, w_, STRIDE).mean(axis=(3, 5))
lp_a_u, m_u = perceive(f_a, frac_u)
lp_b_u, _ = perceive(f_b, frac_u)
cell_w = m_u.sum(axis=1)  # trusted share of each cell, pixel order b, y, x


def cp_loss_weighted(logp, m, wgt):
    target = m.argmax(axis=1)
    return float(-(wgt * logp[np.arange(len(target)), target]).sum() / len(target))


def al_loss_weighted(logp_teacher, logp_student, wgt):
    p = np.exp(logp_teacher)
    return float((wgt * (p * (logp_teacher - logp_student)).sum(axis=1)).sum() / len(wgt))
out = {
    "shape": [B, K, H, W],
    "z_a": z_a.ravel().tolist(),
    "z_b": z_b.ravel().tolist(),
    "labels": y.ravel().tolist(),
    "ce_a": ce(z_a, t),
    "dice_a": dice(z_a, t),
    "seg_a_04_06": 0.4 * ce(z_a, t) + 0.6 * dice(z_a, t),
    "rlcl_adaptive": rl_adaptive,
    "rlcl_lambda": lam.ravel().tolist(),
    "rlcl_hard": rlcl(z_a, z_b, y, mode="hard")[0],
    "rlcl_none": rlcl(z_a, z_b, y, mode="none")[0],
    "rlcl_tau2": rlcl(z_a, z_b, y, tau=2.0)[0],
    "rlcl_alignment_only": rlcl(z_a, z_b, y, w=(1.0, 0.0, 0.0))[0],
    "rlcl_certainty_weighted": rlcl(z_a, z_b, y, pixel_weight="certainty")[0],
    "dml_b_from_a": dml(z_a, z_b),
    "kd_b_from_a_tau2": kd(z_a, z_b, tau=2.0),
    "kdcl_b": kdcl(z_b, z_a),
    "kdcl_b_tau2": kdcl(z_b, z_a, tau=2.0),
    "cross_teaching_b_from_a": cross_teaching(z_b, z_a),
    "cfcl": {
        "dim": D,
        "stride": STRIDE,
        "f_a": f_a.ravel().tolist(),
        "f_b": f_b.ravel().tolist(),
        "cp_a": cp_loss(lp_a, m),
        "cp_b": cp_loss(lp_b, m),
        "al_a_to_b": al_loss(lp_a, lp_b),
    },
    "semi": {
        "threshold": TAU_U,
        "pseudo_labels": y_hat.ravel().tolist(),
        "trusted": trusted.ravel().tolist(),
        "rlcl_b_from_a": rlcl_trusted(z_a, z_b, y_hat, trusted),
        "rlcl_b_from_a_certainty": rlcl_trusted(z_a, z_b, y_hat, trusted, pixel_weight="certainty"),
        "rlcl_b_from_a_tau2": rlcl_trusted(z_a, z_b, y_hat, trusted, tau=2.0),
        "cp_a": cp_loss_weighted(lp_a_u, m_u, cell_w),
        "cp_b": cp_loss_weighted(lp_b_u, m_u, cell_w),
        "al_a_to_b": al_loss_weighted(lp_a_u, lp_b_u, cell_w),
        "cell_weights": cell_w.tolist(),
    },
}
path = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-train/tests/data/loss_reference.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as fh:
    json.dump(out, fh, indent=1)
print("wrote", os.path.normpath(path))
for k, v in out.items():
    if isinstance(v, float):
        print(f"  {k} = {v:.6f}")
print("  cfcl:", {k: round(v, 6) for k, v in out["cfcl"].items() if isinstance(v, float)})
print("  wrong pixels:", int((lam > 0).sum()), "of", lam.size)
print("  semi:", {k: round(v, 6) for k, v in out["semi"].items() if isinstance(v, float)})
print("  trusted pixels:", int(trusted.sum()), "of", trusted.size, "; cell weights:", sorted(set(cell_w.round(3).tolist())))
