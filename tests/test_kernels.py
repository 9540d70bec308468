"""mixed_r1.kernels against float64 references from mixed_r1.algo; both backends (Triton runs under
TRITON_INTERPRET=1 on CPU tensors), several shapes, fp32 and bf16, temperature != 1, masked tokens."""
import math

import pytest
import torch

from mixed_r1 import algo
from mixed_r1.kernels import (HAS_TRITON, force_backend, grpo_loss, linear_token_logprobs, token_logprobs)

D = torch.float64
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="no triton"))]
# (B, T, V): V not a multiple of any block; the last one spans two vocab tiles (8192 under the interpreter)
SHAPES = [(2, 5, 257), (3, 7, 1000), (2, 4, 9001)]


def _tol(dtype):
    # values: float32 accumulation either way; gradients are stored in the logits' dtype
    return dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)


def _logits(B, T, V, dtype, seed, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(B, T + int(noncontig), V, generator=g)
    x = x.to(dtype)
    return x[:, :T] if noncontig else x  # [:, :T] of a longer buffer: non-contiguous rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs(backend, shape, dtype):
    B, T, V = shape
    x = _logits(B, T, V, dtype, seed=V, noncontig=(V == 1000))
    tg = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    tg[0, 0] = V - 1  # last column of the last tile
    temp = 0.7
    gout = torch.randn(B, T, generator=torch.Generator().manual_seed(2))
    xx = x.detach().clone().requires_grad_()
    with force_backend(backend):
        lp = token_logprobs(xx, tg, temp)
    (lp * gout).sum().backward()
    xr = x.detach().to(D).requires_grad_()
    ref = algo.token_logprobs_ref(xr, tg, temp, dtype=D)
    (ref * gout.to(D)).sum().backward()
    assert lp.dtype == torch.float32 and lp.shape == (B, T)
    torch.testing.assert_close(lp.to(D), ref.detach(), atol=2e-5, rtol=2e-5)
    assert xx.grad.dtype == dtype
    torch.testing.assert_close(xx.grad.to(D), xr.grad, **_tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_inplace_backward(backend):
    B, T, V = 2, 3, 300
    x = _logits(B, T, V, torch.float32, seed=5)
    tg = torch.randint(0, V, (B, T))
    base = x.clone().requires_grad_()
    with force_backend(backend):
        lp = token_logprobs(base * 1.0, tg, 1.3, inplace_backward=True)  # a non-leaf buffer we may overwrite
    lp.sum().backward()
    xr = x.to(D).requires_grad_()
    algo.token_logprobs_ref(xr, tg, 1.3, dtype=D).sum().backward()
    torch.testing.assert_close(base.grad.to(D), xr.grad, atol=2e-5, rtol=2e-5)


def _grpo_inputs(B, T, V, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = _logits(B, T, V, dtype, seed)
    tg = torch.randint(0, V, (B, T), generator=g)
    lp = algo.token_logprobs_ref(x.to(D), tg, 0.9, dtype=D)
    old = (lp + 0.3 * torch.randn(B, T, generator=g, dtype=D)).float()  # ratios on both sides of the clip
    ref = (lp + 0.2 * torch.randn(B, T, generator=g, dtype=D)).float()
    adv = torch.randn(B, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[0, :2] = False
    mask[-1, -1] = False
    return x, tg, adv, mask, old, ref


CASES = [  # (loss_type, use_old, use_ref/beta, importance_level)
    ("dapo", True, 0.05, "token"), ("grpo", True, 0.05, "token"), ("bnpo", False, 0.0, "token"),
    ("dr_grpo", True, 0.0, "token"), ("grpo", True, 0.04, "sequence"), ("dapo", False, 0.1, "token"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-old{int(c[1])}-b{c[2]}-{c[3]}")
@pytest.mark.parametrize("shape,dtype", [((3, 6, 777), torch.float32), ((2, 5, 9001), torch.bfloat16)])
def test_grpo_loss_matches_algo(backend, case, shape, dtype):
    loss_type, use_old, beta, level = case
    B, T, V = shape
    x, tg, adv, mask, old, ref = _grpo_inputs(B, T, V, dtype, seed=V + len(loss_type))
    old = old if use_old else None
    ref = ref if beta else None
    kw = dict(beta=beta, eps_low=0.2, eps_high=0.28, temperature=0.9, loss_type=loss_type)
    xx = x.detach().clone().requires_grad_()
    with force_backend(backend):
        loss, metrics = grpo_loss(xx, tg, adv, mask, old, ref, importance_level=level, **kw)
    loss.backward()
    xr = x.detach().to(D).requires_grad_()
    lp = algo.token_logprobs_ref(xr, tg, 0.9, dtype=D)
    ent = algo.entropy_ref(x.detach().to(D), 0.9, dtype=D)
    exp_loss, exp_m = algo.compute_policy_loss(
        lp, adv.to(D), mask.to(D), None if old is None else old.to(D), None if ref is None else ref.to(D),
        importance_level=level, entropy=ent, **{k: v for k, v in kw.items() if k != "temperature"})
    exp_loss.backward()
    torch.testing.assert_close(loss.to(D), exp_loss.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xx.grad.to(D), xr.grad, **_tol(dtype))
    assert set(exp_m) <= set(metrics)
    for k, v in exp_m.items():
        torch.testing.assert_close(metrics[k].to(D), v, atol=1e-4, rtol=1e-4, msg=k)
    torch.testing.assert_close(metrics["logprobs"][mask].to(D), lp.detach()[mask], atol=2e-5, rtol=2e-5)
    assert xx.grad[~mask].abs().max() == 0  # masked rows get no gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_loss_upstream_scale_inplace_and_no_grad(backend):
    B, T, V = 2, 4, 500
    x, tg, adv, mask, old, ref = _grpo_inputs(B, T, V, torch.float32, seed=11)
    kw = dict(beta=0.02, loss_type="grpo", temperature=1.1)
    with force_backend(backend):
        a = x.clone().requires_grad_()
        loss, _ = grpo_loss(a, tg, adv, mask, old, ref, **kw)
        (3.0 * loss).backward()
        b = x.clone().requires_grad_()
        buf = b * 1.0
        loss_b, _ = grpo_loss(buf, tg, adv, mask, old, ref, inplace=True, **kw)
        (3.0 * loss_b).backward()
        with torch.no_grad():
            loss_c, m_c = grpo_loss(x, tg, adv, mask, old, ref, **kw)
    torch.testing.assert_close(b.grad, a.grad)
    torch.testing.assert_close(loss_b, loss)
    torch.testing.assert_close(loss_c, loss)
    xr = x.to(D).requires_grad_()
    lp = algo.token_logprobs_ref(xr, tg, 1.1, dtype=D)
    L, _ = algo.compute_policy_loss(lp, adv.to(D), mask.to(D), old.to(D), ref.to(D), beta=0.02, loss_type="grpo")
    (3.0 * L).backward()
    torch.testing.assert_close(a.grad.to(D), xr.grad, atol=2e-5, rtol=2e-5)


def test_grpo_loss_bad_input():
    x = torch.randn(2, 3, 10)
    tg = torch.zeros(2, 3, dtype=torch.long)
    adv, mask = torch.zeros(2), torch.ones(2, 3)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(x, tg, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(x, tg, adv, mask, loss_type="mean")
    with pytest.raises(ValueError, match="targets"):
        grpo_loss(x, tg[:, :2], adv, mask)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(x, tg, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo_loss(x, tg, adv, mask, torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        grpo_loss(x, torch.full((2, 3), 10), adv, mask)
    grpo_loss(x, torch.full((2, 3), -100), adv, torch.zeros(2, 3))  # masked padding ids are fine
    with pytest.raises(ValueError, match="vocab"):
        token_logprobs(x, torch.full((2, 3), -1))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(x, tg, 0.0)
    with pytest.raises(ValueError, match="weight"):
        linear_token_logprobs(torch.randn(2, 3, 4), torch.randn(10, 5), tg)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,chunk,cols", [(torch.float32, 5, None), (torch.float32, None, None),
                                              (torch.bfloat16, 4, None), (torch.float32, None, 300),
                                              (torch.float32, 5, 300), (torch.bfloat16, None, 300)])
def test_linear_token_logprobs(backend, dtype, chunk, cols):
    """Every tiling (token rows only, vocabulary slices only, both; float32 and bf16) against autograd
    through the float64 log-softmax of the materialized logits."""
    g = torch.Generator().manual_seed(4)
    B, T, H, V = 2, 7, 16, 1003
    h = torch.randn(B, T, H, generator=g).to(dtype)
    w = (0.5 * torch.randn(V, H, generator=g)).to(dtype)
    tg = torch.randint(0, V, (B, T), generator=g)
    gout = torch.randn(B, T, generator=g)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    with force_backend(backend):
        lp = linear_token_logprobs(hh, ww, tg, 0.8, chunk_tokens=chunk, chunk_vocab=cols)
    (lp * gout).sum().backward()
    hr, wr = h.to(D).requires_grad_(), w.to(D).requires_grad_()
    ref = algo.token_logprobs_ref(hr @ wr.t(), tg, 0.8, dtype=D)
    (ref * gout.to(D)).sum().backward()
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=3e-2)
    # bf16: the chunk's logits are rounded to bf16 by the matmul, as on the GPU
    torch.testing.assert_close(lp.to(D), ref.detach(), **tol)
    torch.testing.assert_close(hh.grad.to(D), hr.grad, **tol)
    torch.testing.assert_close(ww.grad.to(D), wr.grad, **tol)
    assert hh.grad.dtype == dtype and ww.grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk,cols", [(3, None), (None, None), (150, None), (None, 70), (40, 100)])
def test_linear_token_logprobs_entropy(backend, chunk, cols):
    """``return_entropy``: the entropy of softmax(h·Wᵀ/T) against torch's own distribution
    entropy, in every tiling (150 rows: more rows than the 64-row x·log x pass; 70 and 100 columns:
    vocabulary slices merged by the online rescaling, token 7's underflowing logit in one), with the
    log-probs and gradients those of the plain call; one logit far below the others (its
    probability underflows to 0) adds nothing, not NaN."""
    g = torch.Generator().manual_seed(6)
    B, T, H, V = 2, 75, 8, 301
    h = torch.randn(B, T, H, generator=g)
    w = torch.randn(V, H, generator=g)
    w[7] = -1e4 * h[0, 0].sign()  # logit of token 7 at (0, 0) ≈ -1e4·|h|₁: exp underflows
    tg = torch.randint(0, V, (B, T), generator=g)
    hh = h.clone().requires_grad_()
    with force_backend(backend):
        lp, ent = linear_token_logprobs(hh, w, tg, 0.7, chunk_tokens=chunk, chunk_vocab=cols,
                                        return_entropy=True)
        plain = linear_token_logprobs(h, w, tg, 0.7, chunk_tokens=chunk, chunk_vocab=cols)
    want = torch.distributions.Categorical(logits=(h.double() @ w.double().t()) / 0.7).entropy()
    assert ent.shape == (B, T) and ent.dtype == torch.float32 and not ent.requires_grad
    torch.testing.assert_close(ent.double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lp.detach(), plain)
    lp.sum().backward()
    assert torch.isfinite(hh.grad).all()


@pytest.mark.parametrize("cols", [None, 20])
def test_linear_token_logprobs_tile_plan_and_second_backward(cols):
    """The default plan: one tile (softmax kept) while N·V fits 2^26, else all token rows by vocabulary
    slices of 1/14 (rows cut only below 4,096 columns); a retained graph's second backward recomputes the
    tile the first one consumed (one tile, or the kept last slice of several) and gives the same grads."""
    from mixed_r1.kernels.linear import default_tiles
    cpu, V = torch.device("cpu"), 151_665
    assert default_tiles(V, cpu, 256) == (256, V)  # B=4, T=64: kept, no recompute
    assert default_tiles(V, cpu, 2048) == (2048, 10_111)  # B=4, T=512: 15 even slices, <= 1/14 of the logits
    assert default_tiles(V, cpu, 600) == (600, 10_111)
    assert default_tiles(V, cpu, 10**6) == ((1 << 26) // 4096, 4096)  # 2^26 logits: rows cut
    assert default_tiles(V, torch.device("cuda"), 256) == ((1 << 26) // V, V)  # Triton: token chunks
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    w = torch.randn(50, 8, generator=g, requires_grad=True)
    tg = torch.randint(0, 50, (2, 5), generator=g)
    with force_backend("torch"):
        lp = linear_token_logprobs(h, w, tg, chunk_vocab=cols)
    lp.sum().backward(retain_graph=True)
    first = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    lp.sum().backward()
    torch.testing.assert_close(h.grad, first[0])
    torch.testing.assert_close(w.grad, first[1])
    want = torch.log_softmax(h.detach() @ w.detach().t(), -1).gather(-1, tg[..., None])[..., 0]
    torch.testing.assert_close(lp.detach(), want)


@pytest.mark.skipif(not HAS_TRITON, reason="no triton")
def test_backend_dispatch_really_runs_triton(monkeypatch):
    """The 'triton' parametrization above must go through the Triton wrappers (and 'torch' must not)."""
    from mixed_r1.kernels import _triton_kernels as tk
    calls = []
    for fn in ("row_stats", "softmax_grad", "grpo_fused"):
        orig = getattr(tk, fn)
        monkeypatch.setattr(tk, fn, lambda *a, _o=orig, _n=fn, **k: (calls.append(_n), _o(*a, **k))[1])
    x = torch.randn(1, 3, 50, requires_grad=True)
    tg = torch.zeros(1, 3, dtype=torch.long)
    with force_backend("torch"):
        token_logprobs(x, tg).sum().backward()
    assert calls == []
    with force_backend("triton"):
        token_logprobs(x, tg).sum().backward()
        grpo_loss(x, tg, torch.ones(1), torch.ones(1, 3))[0].backward()
    assert calls == ["row_stats", "softmax_grad", "grpo_fused"]
    assert tk._row_stats_kernel is not None


try:
    from hypothesis import given, settings, strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    @settings(max_examples=15, deadline=None)
    @given(B=st.integers(1, 3), T=st.integers(1, 5), V=st.integers(2, 700), temp=st.floats(0.3, 2.0),
           eps_low=st.floats(0.0, 0.5), eps_high=st.floats(0.0, 0.5), seed=st.integers(0, 2**16),
           loss_type=st.sampled_from(["grpo", "bnpo", "dr_grpo", "dapo"]),
           backend=st.sampled_from(["torch", "triton"] if HAS_TRITON else ["torch"]))
    def test_grpo_loss_property(B, T, V, temp, eps_low, eps_high, seed, loss_type, backend):
        g = torch.Generator().manual_seed(seed)
        x = 3 * torch.randn(B, T, V, generator=g)
        tg = torch.randint(0, V, (B, T), generator=g)
        old = algo.token_logprobs_ref(x.to(D), tg, temp, dtype=D).float() + 0.3 * torch.randn(B, T, generator=g)
        adv = torch.randn(B, generator=g)
        mask = torch.rand(B, T, generator=g) > 0.3
        xx = x.clone().requires_grad_()
        with force_backend(backend):
            loss, _ = grpo_loss(xx, tg, adv, mask, old, eps_low=eps_low, eps_high=eps_high, temperature=temp,
                                loss_type=loss_type)
        loss.backward()
        xr = x.to(D).requires_grad_()
        exp, _ = algo.compute_policy_loss(algo.token_logprobs_ref(xr, tg, temp, dtype=D), adv.to(D), mask.to(D),
                                          old.to(D), eps_low=eps_low, eps_high=eps_high, loss_type=loss_type)
        exp.backward()
        torch.testing.assert_close(loss.to(D), exp.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xx.grad.to(D), xr.grad, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- masked slots and the KL clamp (issue cases)
def _logits_for_logprobs(logps):
    """[1, T, 2] float32 logits whose log-softmax at target 0 is each of ``logps``:
    logits [l, 0] give log p_0 = -log(1 + e^-l), so l = -log(e^-lp - 1)."""
    rows = [[-math.log(math.expm1(-lp)), 0.0] for lp in logps]
    return torch.tensor([rows], dtype=torch.float32)


def _grpo_case(backend, logps, ref, mask, adv, beta=0.04):
    x = _logits_for_logprobs(logps).requires_grad_()
    tg = torch.zeros(x.shape[:2], dtype=torch.long)
    with force_backend(backend):
        loss, m = grpo_loss(x, tg, torch.tensor([adv]), torch.tensor(mask), None, torch.tensor(ref), beta=beta)
    loss.backward()
    return loss, m, x.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adv", [0.0, 1.0])
def test_grpo_loss_masked_slot_is_inert(backend, adv):
    """beta 0.04, logp [[-1, -2, -100]], ref [[-1.1, -2.1, 0]], mask [[1, 1, 0]]: NaN before (k3 overflowed at
    the masked slot); now the loss of the batch with ordinary values there, and a zero gradient at the slot."""
    loss, m, grad = _grpo_case(backend, [-1.0, -2.0, -100.0], [[-1.1, -2.1, 0.0]], [[1, 1, 0]], adv)
    loss2, m2, grad2 = _grpo_case(backend, [-1.0, -2.0, -3.0], [[-1.1, -2.1, -3.0]], [[1, 1, 0]], adv)
    k3 = math.exp(-0.1) + 0.1 - 1  # d = ref - logp = -0.1 on both live tokens
    assert loss.item() == pytest.approx(-adv + 0.04 * k3, rel=1e-5, abs=1e-9)
    assert loss.item() == loss2.item()
    assert torch.isfinite(grad).all() and grad[0, 2].abs().max().item() == 0.0
    torch.testing.assert_close(grad[0, :2], grad2[0, :2], atol=0, rtol=0)
    assert m["kl_clamp_frac"].item() == 0.0 and m["kl_mean"].item() == pytest.approx(k3, rel=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_loss_kl_clamp_keeps_loss_finite(backend):
    """logp [[-100, -1]], ref [[0, -1]], mask all ones, beta 0.04: the loss was inf; the k3 log-ratio is clamped
    to 20, so loss = 0.04 * (e^20 - 21) / 2 and kl_clamp_frac = 1/2; no KL gradient beyond the bound."""
    loss, m, grad = _grpo_case(backend, [-100.0, -1.0], [[0.0, -1.0]], [[1, 1]], 0.0)
    assert loss.item() == pytest.approx(0.04 * (math.exp(20) - 21) / 2, rel=1e-6)
    assert m["kl_clamp_frac"].item() == 0.5
    # A = 0: token 0's KL term is flat beyond the bound (exactly 0), token 1's d = 0 up to float32 rounding
    assert torch.isfinite(grad).all() and grad[0, 0].abs().max().item() == 0.0
    assert grad[0, 1].abs().max().item() < 1e-8
    # inside the bound the kernel's k3 gradient is the reference's: d = ref - logp = 19.5 on token 0
    x = _logits_for_logprobs([-19.5, -1.0])
    ref = torch.tensor([[0.0, -0.5]])
    xx = x.clone().requires_grad_()
    with force_backend(backend):
        loss, m = grpo_loss(xx, torch.zeros(1, 2, dtype=torch.long), torch.tensor([0.3]), torch.ones(1, 2), None,
                            ref, beta=0.04)
    loss.backward()
    xr = x.to(D).requires_grad_()
    lp = algo.token_logprobs_ref(xr, torch.zeros(1, 2, dtype=torch.long), dtype=D)
    exp_loss, _ = algo.compute_policy_loss(lp, torch.tensor([0.3], dtype=D), torch.ones(1, 2, dtype=D), None,
                                           ref.to(D), beta=0.04)
    exp_loss.backward()
    assert m["kl_clamp_frac"].item() == 0.0
    torch.testing.assert_close(loss.to(D), exp_loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xx.grad.to(D), xr.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_loss_truncated_importance_sampling_matches_algo(backend):
    """With rollout log-probs and a cap, grpo_loss (both backends; the unfused path) gives the
    algo reference's loss, metrics and logits gradient (float64 reference)."""
    g = torch.Generator().manual_seed(3)
    B, T, V = 2, 5, 301
    logits = torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    adv = torch.randn(B, generator=g)
    old = algo.token_logprobs_ref(logits, targets, 1.0, dtype=torch.float64).float() - 0.05
    rollout = old + 0.7 * torch.randn(B, T, generator=g)
    x = logits.clone().requires_grad_()
    with force_backend(backend):
        loss, m = grpo_loss(x, targets, adv, mask, old, rollout_logprobs=rollout, rollout_is_cap=1.5)
    loss.backward()
    xr = logits.double().requires_grad_()
    lp = algo.token_logprobs_ref(xr, targets, 1.0, dtype=torch.float64)
    ref, rm = algo.compute_policy_loss(lp, adv.double(), mask.double(), old.double(),
                                       rollout_logp=rollout.double(), rollout_is_cap=1.5)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    for k in ("rollout_is_weight_mean", "rollout_is_clip_frac"):
        assert float(m[k]) == pytest.approx(float(rm[k]), abs=1e-5), k
    assert 0 < float(m["rollout_is_clip_frac"]) < 1  # some tokens capped, some not
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=2e-6, rtol=1e-4)
