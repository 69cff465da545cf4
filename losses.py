"""Objectives as pure tensor functions, one per paper. Noise predictions are (B, 4, h, w) unless stated.

All losses here are in epsilon (noise) space, as in the papers they come from.
"""
import torch
import torch.nn.functional as F


def esd_target(e_uncond, e_concept, eta):
    """ESD (Gandikota et al. 2023), eq. 2: e*(x_t, c) = e(x_t, 0) - eta * (e(x_t, c) - e(x_t, 0)), frozen model."""
    return e_uncond - eta * (e_concept - e_uncond)


def esd_loss(e_trained, e_uncond, e_concept, eta):
    """ESD: || e_theta'(x_t, c) - [e(x_t, 0) - eta (e(x_t, c) - e(x_t, 0))] ||^2 (mean over elements)."""
    return F.mse_loss(e_trained, esd_target(e_uncond, e_concept, eta).detach())


def stereo_reo_target(e_uncond, e_anchors, e_erase, s_anchor, s_erase):
    """STEREO's Robustly-Erase-Once target (Srivatsan et al. 2024), the compositional form:
    e* = e(0) + s_a mean_a (e(a) - e(0)) - s_e mean_p (e(p) - e(0)) over anchor prompts a and erase prompts p."""
    anchor = torch.stack([e - e_uncond for e in e_anchors]).mean(0)
    erase = torch.stack([e - e_uncond for e in e_erase]).mean(0)
    return e_uncond + s_anchor * anchor - s_erase * erase


def dm2_squared_error(e_pred, e_target, reduction="mean"):
    """DM2 (Meng et al. 2024), eqs. 7-8: E || e_theta(x_t | t, c) - e_theta'(x_t | t, c0) ||_2^2. "sum": each x_t's
    squared L2 norm over its latent elements, averaged over the batch (the paper's norm; SGD's lr 0.01 is set against
    it, so it scales with the latent's size); "mean": averaged over the elements too (a step size that does not)."""
    err = (e_pred - e_target.detach()).pow(2)
    return err.mean() if reduction == "mean" else err.flatten(1).sum(1).mean()


def denoising_loss(e_pred, noise):
    """DDPM / textual inversion (Gal et al. 2023), used by CCE and UnlearnDiff: || e_theta(z_t, t, c) - e ||^2."""
    return F.mse_loss(e_pred, noise)


def uce_closed_form(w0, c_erase, v_target, c_preserve=None, lam=0.1, erase_scale=1.0, preserve_scale=1.0):
    """UCE (Gandikota et al. 2024), closed form of one projection W (out x in):

        W = (lam W0 + s_e sum_e v*_e c_e^T + s_p sum_p W0 c_p c_p^T) (lam I + s_e sum_e c_e c_e^T + s_p sum_p c_p c_p^T)^-1

    It minimises s_e sum_e ||W c_e - v*_e||^2 + s_p sum_p ||W c_p - W0 c_p||^2 + lam ||W - W0||_F^2.
    c_erase: (E, in) erased-concept embeddings; v_target: (E, out) their targets (v* = W0 c_guide);
    c_preserve: (P, in) or None."""
    w0 = w0.double()
    c_erase, v_target = c_erase.double(), v_target.double()
    d_in = w0.shape[1]
    lhs = lam * w0 + erase_scale * v_target.T @ c_erase  # (out, in)
    rhs = lam * torch.eye(d_in, dtype=w0.dtype, device=w0.device) + erase_scale * c_erase.T @ c_erase  # (in, in)
    if c_preserve is not None and len(c_preserve):
        c_p = c_preserve.double()
        lhs = lhs + preserve_scale * (w0 @ c_p.T) @ c_p
        rhs = rhs + preserve_scale * c_p.T @ c_p
    # W rhs = lhs  <=>  rhs^T W^T = lhs^T ; rhs is symmetric
    return torch.linalg.solve(rhs, lhs.T).T


def project_simplex(v):
    """Euclidean projection of each row of v (..., n) onto the probability simplex (Duchi et al. 2008).

    UnlearnDiff keeps its relaxed one-hot token rows on the simplex with this after every step."""
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    cond = u - css / k > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return torch.clamp(v - theta, min=0)


def straight_through_one_hot(probs):
    """Forward: the one-hot of each row's argmax; backward: the gradient of probs (straight-through)."""
    hard = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
    return hard + probs - probs.detach()


def advunlearn_loss(e_adv, e_uncond, e_concept, eta, e_retain, e_retain_orig, gamma):
    """AdvUnlearn (Zhang et al. 2024), upper level: ESD(c*) + gamma E_{c~C_retain} ||e_theta(x_t, c) - e(x_t, c)||^2.

    e_adv: the trained model on the adversarial prompt c*; e_uncond, e_concept: the frozen original on 0 and c;
    e_retain, e_retain_orig: trained and original on retain prompts. Both terms in epsilon space."""
    return esd_loss(e_adv, e_uncond, e_concept, eta) + gamma * F.mse_loss(e_retain, e_retain_orig.detach())


def rece_adversarial_embedding(w_edit, w_orig, c, lam):
    """RECE (Gong et al. 2024): c' = (sum_l W'_l^T W'_l + lam I)^-1 (sum_l W'_l^T W_l) c.

    The minimiser of sum_l ||W'_l c' - W_l c||^2 + lam ||c'||^2: the embedding the edited projections W'_l map
    closest to where the original projections W_l map c. w_edit, w_orig: lists of (out_l, in); c: (N, in) rows
    (each row solved on its own) or (in,). Returns c' with c's shape and dtype."""
    d_in = c.shape[-1]
    gram = lam * torch.eye(d_in, dtype=torch.float64, device=c.device)  # (in, in)
    cross = torch.zeros(d_in, d_in, dtype=torch.float64, device=c.device)
    for we, wo in zip(w_edit, w_orig, strict=True):
        we, wo = we.double(), wo.double()
        gram = gram + we.T @ we
        cross = cross + we.T @ wo
    rows = c.double().reshape(-1, d_in)  # (N, in)
    return torch.linalg.solve(gram, cross @ rows.T).T.reshape(c.shape).to(c.dtype)


def p4d_loss(e_erased, e_original):
    """P4D (Chin et al. 2024): || e_erased(z_t, t, P*) - e_original(z_t, t, P) ||^2, the original frozen."""
    return F.mse_loss(e_erased, e_original.detach())


def ring_a_bell_concept_vector(emb_with, emb_without):
    """Ring-A-Bell (Tsai et al. 2024): c = 1/N sum_i [tau(P_i with concept) - tau(P_i without)], (N,77,D)->(77,D)."""
    return (emb_with - emb_without).mean(0)


def ring_a_bell_target(emb, concept_vector, eta):
    """Ring-A-Bell's problematic embedding: tau(P) + eta * c, for every prompt of emb (B, 77, D)."""
    return emb + eta * concept_vector


def ring_a_bell_loss(emb, target):
    """Ring-A-Bell's search objective: || tau(P^) - (tau(P) + eta c) ||^2 per row (mean over 77 x D)."""
    return (emb - target).pow(2).flatten(1).mean(1)
