"""The zoo: shipped checkpoints load safely and match their model cards and their data.

The generic contract (shapes, Pyro, invertibility, normalisation, dtype, device) runs over every
zoo prior in ``test_priors_flow.py``; this file checks the zoo's loading rules, the statistics of
the shipped priors against their exact data distributions, and training on a tiny setting.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import priors
from priors import zoo
from priors.data import location_finding_sources, two_moons
from priors.train import RECIPES, main, train

SHIPPED = ("two-moons", "sources-2x2")


@pytest.fixture
def zoo_copy(tmp_path):
    """A private copy of the shipped checkpoints, safe to tamper with."""
    for name in SHIPPED:
        for ext in ("pt", "json"):
            shutil.copy(zoo.CHECKPOINT_DIR / f"{name}.{ext}", tmp_path / f"{name}.{ext}")
    return tmp_path


def _standard_normal_nll(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    return 0.5 * flat.pow(2).sum(-1) + 0.5 * flat.shape[-1] * math.log(2 * math.pi)


# ---------------------------------------------------------------------- listing and loading
def test_available_lists_shipped_priors_with_descriptions():
    names = priors.available()
    for name in SHIPPED:
        assert name in names
        assert isinstance(names[name], str) and names[name] and "\n" not in names[name]
    assert set(RECIPES) >= set(SHIPPED)  # every shipped prior can be retrained


def test_unknown_name_lists_available_names():
    with pytest.raises(KeyError, match="unknown prior 'no-such-prior'.*sources-2x2.*two-moons"):
        priors.load("no-such-prior")
    with pytest.raises(zoo.UnknownPriorError):
        priors.load("no-such-prior")


@pytest.mark.parametrize("name", SHIPPED)
def test_load_device_dtype_and_frozen_weights(name, device):
    p = priors.load(name, device=device, dtype=torch.float64)
    assert isinstance(p, priors.FlowPrior)
    assert p.dtype == torch.float64 and p.device.type == torch.device(device).type
    assert tuple(p.event_shape) == tuple(zoo.card(name)["event_shape"])
    assert not any(t.requires_grad for t in p.module.parameters())


@pytest.mark.parametrize("name", SHIPPED)
def test_card_records_training(name):
    info = zoo.card(name)
    assert info["training"]["steps"] > 0 and info["training"]["wall_time_s"] > 0
    assert "seed" in info["training"] and info["versions"]["torch"]
    assert math.isfinite(info["metrics"]["heldout_nll"])
    assert info["checkpoint"]["sha256"] == zoo.sha256(zoo.CHECKPOINT_DIR / f"{name}.pt")


@pytest.mark.parametrize(
    "name, data", [("two-moons", two_moons), ("sources-2x2", location_finding_sources)]
)
def test_heldout_nll_reproduces_card(name, data):
    """A fresh held-out set gives the card's NLL (within Monte Carlo error)."""
    p = priors.load(name)
    x = data(20_000, torch.Generator().manual_seed(123))
    with torch.no_grad():
        nll = -p.log_prob(x)
    se = nll.std().item() / math.sqrt(len(nll))
    assert abs(nll.mean().item() - zoo.card(name)["metrics"]["heldout_nll"]) < 5 * se + 1e-3


# ---------------------------------------------------------------------- tampering
def test_tampered_checkpoint_bytes(zoo_copy):
    path = zoo_copy / "sources-2x2.pt"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"sources-2x2\.pt.*SHA-256"):
        priors.load("sources-2x2", root=zoo_copy)


def test_missing_checkpoint_file(zoo_copy):
    (zoo_copy / "two-moons.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"two-moons\.pt"):
        priors.load("two-moons", root=zoo_copy)


def test_card_architecture_mismatch(zoo_copy):
    """A card whose architecture does not fit the weights (hash intact) is rejected by name."""
    path = zoo_copy / "sources-2x2.json"
    info = json.loads(path.read_text())
    info["architecture"]["config"]["hidden"] = 32
    path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"(?s)sources-2x2\.pt.*architecture.*expected shape"):
        priors.load("sources-2x2", root=zoo_copy)


def test_card_unknown_architecture_and_bad_json(zoo_copy):
    path = zoo_copy / "two-moons.json"
    info = json.loads(path.read_text())
    info["architecture"]["name"] = "no-such-net"
    path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="no-such-net.*known architectures"):
        priors.load("two-moons", root=zoo_copy)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"two-moons\.json is not valid JSON"):
        priors.load("two-moons", root=zoo_copy)


def test_checkpoint_with_code_is_refused(zoo_copy):
    """A pickle that is not tensors-only never runs: weights_only loading rejects it."""
    path = zoo_copy / "sources-2x2.pt"
    torch.save({"payload": shutil.copy}, path)  # a callable: not allowed by weights_only
    info = json.loads((zoo_copy / "sources-2x2.json").read_text())
    info["checkpoint"]["sha256"] = zoo.sha256(path)
    (zoo_copy / "sources-2x2.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"sources-2x2\.pt is not a tensors-only"):
        priors.load("sources-2x2", root=zoo_copy)


# ---------------------------------------------------------------------- sources-2x2 = N(0, I)
def test_sources_matches_standard_normal_moments():
    p = priors.load("sources-2x2")
    n = 40_000
    x = p.sample_with_generator((n,), torch.Generator().manual_seed(7)).reshape(n, 4).double()
    # standard errors for N(0, I): mean 1/sqrt(n), variance sqrt(2/n), covariance 1/sqrt(n)
    assert (x.mean(0).abs() < 4.5 / math.sqrt(n)).all()
    cov = torch.cov(x.T)
    assert ((cov.diagonal() - 1).abs() < 4.5 * math.sqrt(2 / n)).all()
    off = cov - torch.diag(cov.diagonal())
    assert (off.abs() < 4.5 / math.sqrt(n)).all()


def test_sources_mmd_permutation_test_vs_fresh_normal_samples():
    p = priors.load("sources-2x2")
    m, num_perm = 1000, 300
    g = torch.Generator().manual_seed(17)
    x = p.sample_with_generator((m,), g).reshape(m, 4).double()
    y = torch.randn(m, 4, generator=g, dtype=torch.float64)
    pooled = torch.cat([x, y])  # (2m, 4)
    d2 = torch.cdist(pooled, pooled).pow(2)
    k = torch.exp(-d2 / d2.median())  # (2m, 2m) Gaussian kernel, median-heuristic bandwidth
    # biased MMD^2 = s^T K s with s = +1/m on sample one and -1/m on sample two
    s = torch.cat([torch.ones(m), -torch.ones(m)]).double() / m  # (2m,)
    perms = torch.stack([torch.randperm(2 * m, generator=g) for _ in range(num_perm)])
    signs = torch.cat([s[None], s[perms]])  # (1 + num_perm, 2m), row 0 unpermuted
    mmd2 = ((signs @ k) * signs).sum(-1)  # (1 + num_perm,)
    p_value = (1 + (mmd2[1:] >= mmd2[0]).sum().item()) / (num_perm + 1)
    assert p_value > 0.01


def test_sources_heldout_nll_close_to_exact_gaussian():
    info = zoo.card("sources-2x2")["metrics"]
    assert abs(info["heldout_nll_per_dim"] - info["exact_heldout_nll_per_dim"]) < 0.05
    # recompute on fresh draws instead of trusting the card
    p = priors.load("sources-2x2")
    x = location_finding_sources(20_000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        gap = (-p.log_prob(x) - _standard_normal_nll(x)).mean().item() / 4
    assert abs(gap) < 0.05


# ---------------------------------------------------------------------- training, tiny setting
def test_train_tiny_writes_a_loadable_checkpoint(tmp_path):
    info = train("sources-2x2", steps=3, seed=1, out_dir=tmp_path, batch_size=32, num_heldout=256)
    assert (tmp_path / "sources-2x2.pt").is_file() and (tmp_path / "sources-2x2.json").is_file()
    assert info["training"]["steps"] == 3 and info["training"]["seed"] == 1
    assert {"heldout_nll", "exact_heldout_nll", "gap_per_dim"} <= set(info["metrics"])
    p = priors.load("sources-2x2", root=tmp_path)
    assert p.sample((5,)).shape == (5, 2, 2)
    assert priors.available(tmp_path) == {"sources-2x2": RECIPES["sources-2x2"].description}


def test_train_cli_tiny(tmp_path, capsys):
    argv = [
        "two-moons",
        "--steps",
        "2",
        "--seed",
        "0",
        "--batch-size",
        "16",
        "--num-heldout",
        "64",
        "--out-dir",
    ]
    main([*argv, str(tmp_path)])
    assert "wrote two-moons.pt" in capsys.readouterr().out
    first = (tmp_path / "two-moons.pt").read_bytes()
    main([*argv, str(tmp_path)])
    p1 = priors.load("two-moons", root=tmp_path)
    (tmp_path / "two-moons.pt").write_bytes(first)  # same seed, same weights: hash still fits
    p2 = priors.load("two-moons", root=tmp_path)
    x = torch.randn(8, 2)
    torch.testing.assert_close(p1.log_prob(x), p2.log_prob(x))


def test_train_cli_rejects_unknown_name(capsys):
    with pytest.raises(SystemExit):
        main(["no-such-prior"])
    assert "sources-2x2" in capsys.readouterr().err
