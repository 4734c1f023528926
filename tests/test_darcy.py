"""The Darcy solver (bed.problems.darcy): exact linear algebra, 2nd-order convergence on a
manufactured solution, gradients against finite differences, and the bilinear sensor."""

import math

import pytest
import torch

from bed.problems import darcy

F64 = torch.float64


def _dense_matrix(u):
    """The `(B, n^2, n^2)` finite-volume matrix, built entry by entry from its definition."""
    tx, ty, diag = darcy.transmissibilities(u)
    b, n = u.shape[0], u.shape[-1]
    a = torch.zeros(b, n * n, n * n, dtype=u.dtype)
    for j in range(n):
        for i in range(n):
            c = j * n + i
            a[:, c, c] = diag[:, j, i]
            if i < n - 1:
                a[:, c, c + 1] = a[:, c + 1, c] = -tx[:, j, i]
            if j < n - 1:
                a[:, c, c + n] = a[:, c + n, c] = -ty[:, j, i]
    return a


def test_solve_matches_dense_solve_and_batches():
    g = torch.Generator().manual_seed(0)
    n = 6
    u = 1.5 * torch.randn(2, 3, n, n, generator=g, dtype=F64)
    f = torch.rand(n, n, generator=g, dtype=F64)
    p = darcy.solve(u, f)
    assert p.shape == (2, 3, n, n)
    a = _dense_matrix(u.reshape(-1, n, n))
    rhs = (f / n**2).reshape(1, -1, 1).expand(6, -1, -1)
    ref = torch.linalg.solve(a, rhs).reshape(2, 3, n, n)
    torch.testing.assert_close(p, ref, rtol=1e-10, atol=1e-13)
    # one field at a time gives the same answer as the batch
    torch.testing.assert_close(darcy.solve(u[1, 2], f), p[1, 2], rtol=1e-12, atol=1e-15)


def test_transmissibilities_are_harmonic_means_and_walls_count_twice():
    u = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]]], dtype=F64)
    tx, ty, diag = darcy.transmissibilities(u)
    torch.testing.assert_close(tx[0, 0, 0], torch.tensor(2 * 3 / 4, dtype=F64))  # H(1, 3)
    torch.testing.assert_close(ty[0, 0, 0], torch.tensor(2 * 2 / 3, dtype=F64))  # H(1, 2)
    # cell (0, 0), k = 1: two interior faces plus two walls at 2 k each
    torch.testing.assert_close(diag[0, 0, 0], torch.tensor(1.5 + 4 / 3 + 4.0, dtype=F64))


def _manufactured(n):
    """Max error at the cell centres for p = sin(pi x) sin(pi y), u = sin(2x)/2 + y."""
    c = (torch.arange(n, dtype=F64) + 0.5) / n
    y, x = torch.meshgrid(c, c, indexing="ij")
    u = 0.5 * torch.sin(2 * x) + y
    sx, sy, cx, cy = (
        torch.sin(math.pi * x),
        torch.sin(math.pi * y),
        torch.cos(math.pi * x),
        torch.cos(math.pi * y),
    )
    exact = sx * sy
    # f = -div(e^u grad p) = -e^u (u_x p_x + u_y p_y + lap p)
    f = -u.exp() * (
        torch.cos(2 * x) * math.pi * cx * sy + math.pi * sx * cy - 2 * math.pi**2 * sx * sy
    )
    return (darcy.solve(u, f) - exact).abs().max().item()


def test_manufactured_solution_converges_at_second_order():
    errors = [_manufactured(n) for n in (8, 16, 32)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert errors[-1] < 2e-3
    for order in orders:
        assert 1.9 < order < 2.1, (errors, orders)


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 4, 4, generator=g, dtype=F64, requires_grad=True)
    f = torch.rand(4, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, f: darcy.solve(u, f), (u, f))


def test_gradient_of_a_sensor_reading_matches_central_differences():
    """d y / d u of a pressure reading, autograd vs central differences, per cell (n = 8)."""
    g = torch.Generator().manual_seed(2)
    n = 8
    u = torch.randn(n, n, generator=g, dtype=F64)
    point = torch.tensor([0.37, 0.61], dtype=F64)

    def reading(v):
        return darcy.interpolate(darcy.pad(darcy.solve(v, 10.0)), point)

    v = u.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reading(v), v)
    h = 1e-6
    fd = torch.zeros_like(u)
    for j in range(n):
        for i in range(n):
            e = torch.zeros_like(u)
            e[j, i] = h
            fd[j, i] = (reading(u + e) - reading(u - e)) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-9)


def test_interpolate_is_exact_for_bilinear_fields_and_zero_on_walls():
    n = 5
    c = (torch.arange(n, dtype=F64) + 0.5) / n
    y, x = torch.meshgrid(c, c, indexing="ij")
    field = 1.0 + 2.0 * x - 3.0 * y + 4.0 * x * y
    padded = darcy.pad(field)
    g = torch.Generator().manual_seed(3)
    # strictly inside the cell-centre hull the bilinear field is reproduced exactly
    pts = 0.5 / n + (1 - 1 / n) * torch.rand(50, 2, generator=g, dtype=F64)
    px, py = pts.unbind(-1)
    torch.testing.assert_close(
        darcy.interpolate(padded, pts), 1.0 + 2.0 * px - 3.0 * py + 4.0 * px * py
    )
    # the cell centres read the cell values, the walls read 0
    torch.testing.assert_close(
        darcy.interpolate(padded, torch.stack([x, y], -1)), field, rtol=1e-12, atol=1e-12
    )
    walls = torch.tensor([[0.0, 0.3], [1.0, 0.7], [0.2, 0.0], [0.9, 1.0]], dtype=F64)
    torch.testing.assert_close(darcy.interpolate(padded, walls), torch.zeros(4, dtype=F64))


def test_interpolate_broadcasts_fields_against_points():
    g = torch.Generator().manual_seed(4)
    fields = darcy.pad(torch.randn(3, 6, 6, generator=g, dtype=F64))  # (M, 8, 8)
    pts = torch.rand(4, 2, 2, generator=g, dtype=F64)  # (b, q, 2)
    out = darcy.interpolate(fields[None, :, None], pts[:, None])  # (b, M, q)
    assert out.shape == (4, 3, 2)
    for b in range(4):
        for m in range(3):
            torch.testing.assert_close(out[b, m], darcy.interpolate(fields[m], pts[b]))


def test_gradient_in_the_sensor_location_matches_finite_differences():
    g = torch.Generator().manual_seed(5)
    padded = darcy.pad(darcy.solve(torch.randn(6, 6, generator=g, dtype=F64), 1.0))
    pts = torch.tensor([[0.31, 0.44], [0.77, 0.12]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: darcy.interpolate(padded, q), (pts,))


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(\.\.\., n, n\)"):
        darcy.solve(torch.zeros(4, 5))
