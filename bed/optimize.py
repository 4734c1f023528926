"""``optimize_design``: maximize an EIG acquisition over a design space.

Three routes:

- a ``Box``: multi-start L-BFGS-B through BoTorch's ``optimize_acqf`` (gradients flow through the
  reparameterized likelihood); with ``fixed_features_list`` the mixed continuous/discrete
  optimizer ``optimize_acqf_mixed``;
- ``Candidates``: ``optimize_acqf_discrete`` (``q > 1`` by sequential greedy selection);
- ``surrogate="gp"``: for likelihoods without gradients or with expensive simulators, noisy EIG
  estimates at a Sobol design train a ``SingleTaskGP`` (the estimates' squared standard errors
  are its observation noise); ``qLogNoisyExpectedImprovement`` picks further designs one at a
  time, and the evaluated design with the best GP posterior mean is returned. With
  ``executor=`` (a ``bed.executor.Executor`` or a ``dask.distributed.Client``) the EIG
  estimates run as tasks there: the initial design split into one block of rows per worker,
  results gathered in order.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.exceptions.warnings import OptimizationWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf, optimize_acqf_discrete, optimize_acqf_mixed
from botorch.utils.sampling import draw_sobol_samples
from gpytorch.mlls import ExactMarginalLogLikelihood
from linear_operator.utils.warnings import NumericalWarning
from torch import Tensor

from bed.acquisition import qEIG
from bed.design_space import Box, Candidates, DesignSpace

__all__ = ["optimize_design"]


def optimize_design(
    acq: qEIG,
    design_space: DesignSpace | None = None,
    q: int = 1,
    surrogate: str | None = None,
    num_restarts: int = 8,
    raw_samples: int = 128,
    **options,
) -> Tensor:
    """The joint design of ``q`` measurements that maximizes ``acq``.

    Args:
        acq: a ``bed.qEIG`` (any BoTorch acquisition function works for the gradient and
            discrete routes).
        design_space: a ``Box`` or ``Candidates`` (default ``acq.exp.design_space``).
        q: the number of measurements chosen jointly.
        surrogate: ``None`` (optimize ``acq`` directly) or ``"gp"`` (Bayesian optimization of
            noisy EIG estimates).
        num_restarts: L-BFGS-B starts (Box routes).
        raw_samples: random designs scored to pick the starts (Box routes).
        **options: ``fixed_features_list`` (mixed route); ``num_evaluations`` (default 30),
            ``num_initial`` (default ``min(10, num_evaluations // 2)``), ``seed`` and
            ``executor`` (where EIG estimates run, default here) (GP route);
            ``max_batch_size`` (Candidates); anything else goes to the optimizer's ``options``.

    Returns:
        A `q x d` tensor of designs.
    """
    space = acq.exp.design_space if design_space is None and hasattr(acq, "exp") else design_space
    if not isinstance(space, DesignSpace):
        raise TypeError(f"design_space: expected a bed.Box or bed.Candidates, got {space!r}")
    if hasattr(acq, "exp") and space.dim != acq.exp.design_dim:
        raise ValueError(
            f"design_space: has dimension {space.dim}, the experiment's designs have "
            f"dimension {acq.exp.design_dim}"
        )
    if q < 1:
        raise ValueError(f"q: expected a positive number of measurements, got {q}")
    ref = acq.theta if hasattr(acq, "theta") else torch.zeros(())
    if surrogate == "gp":
        return _optimize_gp(acq, space, q, num_restarts, raw_samples, **options)
    if surrogate is not None:
        raise ValueError(f"surrogate: expected None or 'gp', got {surrogate!r}")
    if isinstance(space, Candidates):
        max_batch_size = options.pop("max_batch_size", 256)
        _no_options(options, "Candidates")
        choices = space.points.to(ref)
        if q > len(space):
            raise ValueError(f"q: {q} designs requested from only {len(space)} candidates")
        x, _ = optimize_acqf_discrete(acq, q=q, choices=choices, max_batch_size=max_batch_size)
        return x.detach()
    if not isinstance(space, Box):
        raise TypeError(f"design_space: no optimizer for {type(space).__name__}")
    bounds = space.bounds.to(ref)  # (2, d)
    fixed_features_list = options.pop("fixed_features_list", None)
    kw = {"num_restarts": num_restarts, "raw_samples": raw_samples, "options": options or None}
    with _routine_bo_warnings_silenced():  # L-BFGS-B retries on a Monte Carlo objective
        if fixed_features_list is not None:
            x, _ = optimize_acqf_mixed(
                acq, bounds, q, fixed_features_list=fixed_features_list, **kw
            )
        else:
            x, _ = optimize_acqf(acq, bounds, q, **kw)
    return x.detach().clamp(bounds[0], bounds[1])  # (q, d)


def _no_options(options: dict, route: str) -> None:
    if options:
        raise TypeError(f"optimize_design: unexpected options for {route}: {sorted(options)}")


@contextlib.contextmanager
def _routine_bo_warnings_silenced():
    """Silence the warnings that are routine in small-data Bayesian optimization.

    Log-EI is flat far from the data, where L-BFGS-B may stop "ABNORMAL" and BoTorch retries
    from new starts; near-duplicate designs make the joint GP covariance need Cholesky jitter,
    which gpytorch adds. Both are handled by the libraries; surfacing them only adds noise.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizationWarning)
        warnings.simplefilter("ignore", NumericalWarning)
        warnings.filterwarnings("ignore", "Optimization failed", RuntimeWarning)
        yield


def _optimize_gp(
    acq: qEIG,
    space: DesignSpace,
    q: int,
    num_restarts: int,
    raw_samples: int,
    num_evaluations: int = 30,
    num_initial: int | None = None,
    seed: int = 0,
    executor=None,
    **options,
) -> Tensor:
    """Bayesian optimization of noisy EIG estimates with a GP surrogate (float64)."""
    from bed.executor import TaskError, as_executor

    _no_options(options, "surrogate='gp'")
    executor = as_executor(executor)
    if not hasattr(acq, "estimate"):
        raise TypeError("surrogate='gp' needs an acquisition with estimate(X) -> (mean, stderr)")
    num_initial = min(10, num_evaluations // 2) if num_initial is None else num_initial
    if not 2 <= num_initial <= num_evaluations:
        raise ValueError(
            f"num_initial: expected 2 <= num_initial <= num_evaluations = {num_evaluations}, "
            f"got {num_initial}"
        )
    d = space.dim
    f64 = {"dtype": torch.float64, "device": acq.theta.device}
    if isinstance(space, Candidates):
        if q != 1:
            raise ValueError("surrogate='gp' over Candidates supports q = 1 only")
        choices = space.points.to(**f64)  # (m, d)
        gen = torch.Generator().manual_seed(seed)
        num_initial = min(num_initial, len(space))
        idx = torch.randperm(len(space), generator=gen)[:num_initial].to(choices.device)
        train_x = choices[idx]  # (n0, d)
        bounds = space.bounds.to(**f64)
    else:
        box = space.bounds.to(**f64)  # (2, d)
        bounds = box.repeat(1, q)  # (2, q d): a joint design flattened
        train_x = draw_sobol_samples(bounds, n=num_initial, q=1, seed=seed).squeeze(1)  # (n0, qd)

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:  # x (n, q d) -> (n, 1), (n, 1)
        X = x.reshape(-1, q, d).to(acq.theta)  # (n, q, d)
        blocks = X.chunk(min(executor.workers, X.shape[0]))  # one block of rows per worker
        try:
            parts = executor.map(_estimate, [(acq, b) for b in blocks], name="bed-eig")
        except TaskError as err:
            raise RuntimeError(
                f"surrogate='gp': EIG estimate of designs {blocks[err.index].tolist()} failed: "
                f"{err}"
            ) from err.cause
        est = torch.cat([p[0] for p in parts]).to(x)  # (n,)
        se = torch.cat([p[1] for p in parts]).to(x)
        return est.unsqueeze(-1), se.unsqueeze(-1)

    train_y, train_se = evaluate(train_x)

    def fit() -> SingleTaskGP:
        yvar = train_se.pow(2).clamp_min(1e-4 * train_y.var().clamp_min(1e-12))  # floor: 1% of sd
        model = SingleTaskGP(
            train_x,
            train_y,
            train_Yvar=yvar,
            input_transform=Normalize(train_x.shape[-1], bounds=bounds),
            outcome_transform=Standardize(1),
        )
        with _routine_bo_warnings_silenced():
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model

    while train_x.shape[0] < num_evaluations:
        model = fit()
        with _routine_bo_warnings_silenced():
            ei = qLogNoisyExpectedImprovement(model, X_baseline=train_x, prune_baseline=True)
        if isinstance(space, Candidates):
            new, _ = optimize_acqf_discrete(ei, q=1, choices=choices, X_avoid=train_x)
        else:
            with _routine_bo_warnings_silenced():
                new, _ = optimize_acqf(
                    ei, bounds, 1, num_restarts=num_restarts, raw_samples=raw_samples
                )
        new_y, new_se = evaluate(new.detach())
        train_x = torch.cat([train_x, new.detach()])
        train_y, train_se = torch.cat([train_y, new_y]), torch.cat([train_se, new_se])
    model = fit()
    with torch.no_grad(), _routine_bo_warnings_silenced():
        mean = model.posterior(train_x).mean.squeeze(-1)  # (n,)
    best = train_x[mean.argmax()].reshape(q, d)
    return best.to(acq.theta)


def _estimate(acq: qEIG, X: Tensor) -> tuple[Tensor, Tensor]:
    """``acq.estimate`` of `n x q x d` designs (a task of the GP route; runs on any worker)."""
    with torch.no_grad():
        return acq.estimate(X)
