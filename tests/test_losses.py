"""Each objective equals its formula, checked against an independent computation on toy tensors."""
import torch

import losses


def test_esd_target_and_loss():
    g = torch.Generator().manual_seed(0)
    e0, ec, en = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    eta = 1.7
    target = losses.esd_target(e0, ec, eta)
    torch.testing.assert_close(target, e0 - eta * ec + eta * e0)
    torch.testing.assert_close(losses.esd_loss(en, e0, ec, eta), ((en - target) ** 2).mean())
    # eta = 0: the concept's prediction is pulled to the unconditional one
    torch.testing.assert_close(losses.esd_target(e0, ec, 0.0), e0)


def test_uce_closed_form_equals_least_squares():
    g = torch.Generator().manual_seed(1)
    d_out, d_in, n_e, n_p = 5, 7, 4, 6
    w0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    c_e = torch.randn(n_e, d_in, generator=g, dtype=torch.float64)
    v = torch.randn(n_e, d_out, generator=g, dtype=torch.float64)
    c_p = torch.randn(n_p, d_in, generator=g, dtype=torch.float64)
    lam, s_e, s_p = 0.3, 1.5, 0.7
    w = losses.uce_closed_form(w0, c_e, v, c_p, lam, s_e, s_p)
    # the same objective as one stacked least-squares problem: rows of A W^T = B
    a = torch.cat([s_e ** 0.5 * c_e, s_p ** 0.5 * c_p, lam ** 0.5 * torch.eye(d_in, dtype=torch.float64)])
    b = torch.cat([s_e ** 0.5 * v, s_p ** 0.5 * c_p @ w0.T, lam ** 0.5 * w0.T])
    w_ls = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(w, w_ls)
    # and it is a minimum: any perturbation raises the objective
    def objective(m):
        return (s_e * ((c_e @ m.T - v) ** 2).sum() + s_p * ((c_p @ m.T - c_p @ w0.T) ** 2).sum()
                + lam * ((m - w0) ** 2).sum())
    assert objective(w) < objective(w + 1e-3 * torch.randn(w.shape, generator=g, dtype=torch.float64))


def test_uce_without_preservation_and_huge_lambda():
    w0 = torch.randn(3, 4, dtype=torch.float64)
    c_e, v = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(losses.uce_closed_form(w0, c_e, v, None, lam=1e9), w0)  # lambda -> inf: unchanged
    w = losses.uce_closed_form(w0, c_e, v, None, lam=1e-9)
    torch.testing.assert_close(c_e @ w.T, v, rtol=1e-5, atol=1e-5)  # lambda -> 0: the erased columns hit v*


def test_project_simplex():
    v = torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, -1.0], [0.2, 0.3, 0.5], [-1.0, -1.0, 5.0]])
    p = losses.project_simplex(v)
    torch.testing.assert_close(p, torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5],
                                                [0.0, 0.0, 1.0]]))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 3, 20, generator=g) * 3
    p = losses.project_simplex(x)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(50, 3))
    # closest point: no other point of the simplex is nearer
    other = torch.softmax(torch.randn(50, 3, 20, generator=g), -1)
    assert ((x - p).norm(dim=-1) <= (x - other).norm(dim=-1) + 1e-6).all()


def test_straight_through_one_hot():
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], requires_grad=True)
    hard = losses.straight_through_one_hot(probs)
    assert torch.equal(hard.detach(), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    (hard * torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).sum().backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))


def test_denoising_loss():
    a, b = torch.ones(2, 4), torch.zeros(2, 4)
    assert losses.denoising_loss(a, b).item() == 1.0


def test_stereo_reo_target():
    g = torch.Generator().manual_seed(3)
    e0, a1, a2, p1 = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(4))
    s_a, s_e = 1.0, 3.0
    got = losses.stereo_reo_target(e0, [a1, a2], [p1], s_a, s_e)
    torch.testing.assert_close(got, e0 + s_a * ((a1 + a2) / 2 - e0) - s_e * (p1 - e0))
    # with one anchor and s_a = 1, s_e = 0 the target is the anchor's own prediction
    torch.testing.assert_close(losses.stereo_reo_target(e0, [a1], [p1], 1.0, 0.0), a1)


def test_sampling_esds_target_is_negative_guidance():
    """scripts/esd_ideal.py's premise: guidance g on a model that meets ESD's target exactly is the original model at
    guidance -g * eta."""
    g = torch.Generator().manual_seed(4)
    e0, ec = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(2))
    for eta, guidance in ((1.0, 5.0), (2.0, 5.0), (0.5, 7.5)):
        ideal = e0 + guidance * (losses.esd_target(e0, ec, eta) - e0)
        torch.testing.assert_close(ideal, e0 + (-guidance * eta) * (ec - e0))


def test_dm2_squared_error_mean_and_the_papers_norm():
    """"sum" is each x_t's squared L2 norm averaged over the batch (DM2's eqs. 7-8): the mean's value times the
    elements of one latent, so SGD's step with it grows with the latent's size and Adam's does not."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    by_hand = sum(float(((pred[i] - target[i]) ** 2).sum()) for i in range(3)) / 3
    assert abs(float(losses.dm2_squared_error(pred, target, "sum")) - by_hand) < 1e-3
    mean = losses.dm2_squared_error(pred, target)
    torch.testing.assert_close(mean, torch.nn.functional.mse_loss(pred, target))
    torch.testing.assert_close(losses.dm2_squared_error(pred, target, "sum"), mean * 4 * 8 * 8)
    p = pred.clone().requires_grad_(True)
    losses.dm2_squared_error(p, target).backward()
    assert p.grad is not None and float(losses.dm2_squared_error(target, target, "sum")) == 0.0
