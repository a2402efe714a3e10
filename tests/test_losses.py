"""The GCL and CLIP losses against literal implementations of their formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_gcl import ALL_LOSS_PAIRS
from trainer.losses import build_loss, clip_loss, gcl_loss

MODALITIES = ("i", "t", "it")


def literal_gcl(e, temperature, pairs=ALL_LOSS_PAIRS, weights=None, exclude_other_positive=False):
    """Eq. 2 as loops: e = {"i": (N, d), "t": ..., "it": ...}, float64 math in Python."""
    n = e["i"].shape[0]
    weights = weights or [1.0] * len(pairs)
    terms = {}
    for name in pairs:
        a, b = name.split("2")
        total = 0.0
        for j in range(n):
            numerator = math.exp(float(e[a][j] @ e[b][j]) / temperature)
            denominator = 0.0
            for m in MODALITIES:
                for k in range(n):
                    if m == a and k == j:
                        continue  # the anchor itself
                    if exclude_other_positive and k == j and m not in (a, b):
                        continue  # the anchor's other positive
                    denominator += math.exp(float(e[a][j] @ e[m][k]) / temperature)
            total += -math.log(numerator / denominator)
        terms[name] = total / n
    loss = sum(w * terms[p] for p, w in zip(pairs, weights)) / sum(weights)
    return loss, terms


def literal_clip(e_i, e_t, temperature):
    n = e_i.shape[0]
    total = 0.0
    for j in range(n):
        s = [float(e_i[j] @ e_t[k]) / temperature for k in range(n)]
        total += -math.log(math.exp(s[j]) / sum(math.exp(x) for x in s))
        s = [float(e_t[j] @ e_i[k]) / temperature for k in range(n)]
        total += -math.log(math.exp(s[j]) / sum(math.exp(x) for x in s))
    return total / (2 * n)


def random_embeddings(n=5, d=8, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    e_i = torch.randn(n, d, generator=generator, dtype=dtype)
    e_t = torch.randn(n, d, generator=generator, dtype=dtype)
    e_it = e_i + e_t + 0.3 * torch.randn(n, d, generator=generator, dtype=dtype)
    return {key: F.normalize(value, dim=-1) for key, value in (("i", e_i), ("t", e_t), ("it", e_it))}


def test_reference_value_from_spec():
    torch.manual_seed(0)
    e_i, e_t = torch.randn(5, 8), torch.randn(5, 8)
    e = {k: F.normalize(v.double(), dim=-1) for k, v in (("i", e_i), ("t", e_t), ("it", e_i + e_t))}
    loss, _ = gcl_loss(e["i"], e["t"], e["it"], 0.05)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(6.361366868900, abs=1e-6)
    assert literal_gcl(e, 0.05)[0] == pytest.approx(6.361366868900, abs=1e-6)


@pytest.mark.parametrize("seed,n,temperature", [(1, 4, 0.05), (2, 7, 0.1), (3, 3, 0.02)])
def test_matches_literal_loop_with_all_terms(seed, n, temperature):
    e = random_embeddings(n=n, seed=seed)
    loss, terms = gcl_loss(e["i"], e["t"], e["it"], temperature)
    expected_loss, expected_terms = literal_gcl(e, temperature)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert set(terms) == {f"loss_{p}" for p in ALL_LOSS_PAIRS}
    for name, value in expected_terms.items():
        assert terms[f"loss_{name}"].item() == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize(
    "pairs,weights",
    [(["i2t", "t2i"], None), (["i2t", "i2it", "t2it"], [2.0, 1.0, 0.5]), (list(ALL_LOSS_PAIRS), [1, 2, 3, 4, 5, 6])],
)
def test_pair_subsets_and_weights_match_literal_loop(pairs, weights):
    e = random_embeddings(n=5, seed=4)
    loss, terms = gcl_loss(e["i"], e["t"], e["it"], 0.07, pairs=pairs, weights=weights)
    expected_loss, _ = literal_gcl(e, 0.07, pairs=pairs, weights=weights)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert set(terms) == {f"loss_{p}" for p in pairs}


def test_exclude_other_positive_matches_literal_loop_and_differs_from_eq2():
    e = random_embeddings(n=6, seed=5)
    loss, _ = gcl_loss(e["i"], e["t"], e["it"], 0.05, exclude_other_positive=True)
    expected, _ = literal_gcl(e, 0.05, exclude_other_positive=True)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() < gcl_loss(e["i"], e["t"], e["it"], 0.05)[0].item()


def test_known_arrangement():
    """Each sample's three embeddings are one unit vector u_j, the u_j orthonormal. Every row then sees its 2 positives
    at similarity 1 and 3N - 3 negatives at 0, so each term is log(2 + (3N - 3)·exp(-1/τ))."""
    n, tau = 4, 0.1
    u = torch.eye(n, dtype=torch.float64)
    loss, terms = gcl_loss(u, u, u, tau)
    expected = math.log(2 + (3 * n - 3) * math.exp(-1 / tau))
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert all(value.item() == pytest.approx(expected, abs=1e-12) for value in terms.values())
    # Dropping the other positive leaves one positive: log(1 + (3N - 3)·exp(-1/τ)).
    loss_excl, _ = gcl_loss(u, u, u, tau, exclude_other_positive=True)
    assert loss_excl.item() == pytest.approx(math.log(1 + (3 * n - 3) * math.exp(-1 / tau)), abs=1e-12)


def test_gradcheck_embeddings_and_temperature():
    e = random_embeddings(n=3, d=4, seed=6)
    inputs = tuple(e[k].clone().requires_grad_(True) for k in MODALITIES)
    temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t, it, tau: gcl_loss(i, t, it, tau)[0], (*inputs, temperature))
    assert torch.autograd.gradcheck(
        lambda i, t, it, tau: gcl_loss(i, t, it, tau, pairs=["i2t", "it2i"], weights=[1, 3],
                                       exclude_other_positive=True)[0],
        (*inputs, temperature),
    )


def test_gradient_matches_autograd_of_literal_formula():
    """The vectorised gradient equals the gradient of an independent torch transcription of Eq. 2 (loops)."""
    e = random_embeddings(n=4, d=6, seed=7)
    a = {k: v.clone().requires_grad_(True) for k, v in e.items()}
    b = {k: v.clone().requires_grad_(True) for k, v in e.items()}
    gcl_loss(a["i"], a["t"], a["it"], 0.05)[0].backward()
    total = 0
    n = 4
    for name in ALL_LOSS_PAIRS:
        p, q = name.split("2")
        for j in range(n):
            denominator = sum(
                torch.exp(b[p][j] @ b[m][k] / 0.05) for m in MODALITIES for k in range(n) if not (m == p and k == j)
            )
            total = total - torch.log(torch.exp(b[p][j] @ b[q][j] / 0.05) / denominator)
    (total / (6 * n)).backward()
    for key in MODALITIES:
        torch.testing.assert_close(a[key].grad, b[key].grad, atol=1e-9, rtol=1e-7)


def test_half_precision_inputs_are_computed_in_float32():
    e = random_embeddings(n=8, d=16, seed=8, dtype=torch.float32)
    reference, _ = gcl_loss(e["i"], e["t"], e["it"], 0.02)
    half = {k: v.to(torch.bfloat16) for k, v in e.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = gcl_loss(half["i"], half["t"], half["it"], 0.02)
    assert loss.dtype == torch.float32
    # Only the bf16 rounding of the embeddings differs, not the softmax.
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)


def test_clip_baseline_matches_literal_and_is_not_gcl_on_i2t_t2i():
    e = random_embeddings(n=5, seed=9)
    loss, terms = clip_loss(e["i"], e["t"], 0.05)
    assert loss.item() == pytest.approx(literal_clip(e["i"], e["t"], 0.05), abs=1e-9)
    assert set(terms) == {"loss_i2t", "loss_t2i"}
    restricted, _ = gcl_loss(e["i"], e["t"], e["it"], 0.05, pairs=["i2t", "t2i"])
    assert abs(restricted.item() - loss.item()) > 1e-3  # GCL's denominator spans all 3N - 1 items


def test_bad_arguments_raise():
    e = random_embeddings(n=3)
    with pytest.raises(ValueError, match="Unknown loss pair"):
        gcl_loss(e["i"], e["t"], e["it"], 0.1, pairs=["i2i"])
    with pytest.raises(ValueError, match="weights"):
        gcl_loss(e["i"], e["t"], e["it"], 0.1, pairs=["i2t"], weights=[1, 2])
    with pytest.raises(ValueError, match="batch sizes differ"):
        gcl_loss(e["i"], e["t"][:2], e["it"], 0.1)
    with pytest.raises(ValueError, match="Unknown loss"):
        build_loss("triplet")
