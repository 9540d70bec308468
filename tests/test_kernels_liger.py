"""grpo_loss against Liger-Kernel's triton_grpo_loss (a test-only peer; its Triton runs under the
interpreter on CPU) for every loss type both implement, loss, gradient and clip/KL metrics."""
import pytest
import torch

from mixed_r1 import algo
from mixed_r1.kernels import HAS_TRITON, force_backend, grpo_loss

liger = pytest.importorskip("liger_kernel.transformers.grpo_loss", reason="liger-kernel not installed")
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="no triton")
D = torch.float64


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("use_old,beta", [(True, 0.04), (False, 0.0)])
def test_grpo_loss_matches_liger(backend, loss_type, use_old, beta):
    g = torch.Generator().manual_seed(len(loss_type) + int(use_old))
    B, T, V, temp = 3, 6, 1500, 0.9
    # Liger takes logits [B, T+1, V] and ignores the last row; we pass its first T rows as a view
    full = 3 * torch.randn(B, T + 1, V, generator=g)
    tg = torch.randint(0, V, (B, T), generator=g)
    lp = algo.token_logprobs_ref(full[:, :T].to(D), tg, temp, dtype=D).float()
    old = lp + 0.3 * torch.randn(B, T, generator=g) if use_old else None
    ref = lp + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.25).to(torch.int32)
    kw = dict(beta=beta, eps_low=0.2, eps_high=0.28, temperature=temp, loss_type=loss_type)

    a = full.clone().requires_grad_()
    loss_l, metrics_l = liger.triton_grpo_loss(a, old, ref, tg, adv, mask, inplace=False, reduce=True, **kw)
    loss_l.backward()

    b = full.clone().requires_grad_()
    with force_backend(backend):
        loss, metrics = grpo_loss(b[:, :T], tg, adv, mask.bool(), old, ref, **kw)
    loss.backward()

    torch.testing.assert_close(loss, loss_l, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.grad[:, :T], a.grad[:, :T], atol=1e-6, rtol=1e-4)
    assert b.grad[:, T].abs().max() == 0
    torch.testing.assert_close(metrics["clip_frac"], metrics_l[-1], atol=1e-6, rtol=0)
    if beta:
        torch.testing.assert_close(metrics["kl_mean"], metrics_l[0], atol=1e-5, rtol=1e-5)
