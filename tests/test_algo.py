"""mixed_r1.algo against hand-computed cases and independent float64 formulas (TRL's, written out)."""
import math

import pytest
import torch

from mixed_r1 import algo

D = torch.float64


def test_grpo_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0], dtype=D)
    a = algo.grpo_advantages(r, 3, eps=0.0)
    # group 1: mean 1/3, unbiased std sqrt(1/3); group 2: mean 4/3, std sqrt(4/3)
    s1, s2 = math.sqrt(1 / 3), math.sqrt(4 / 3)
    exp = torch.tensor([(2 / 3) / s1, (-1 / 3) / s1, (-1 / 3) / s1, (-4 / 3) / s2, (2 / 3) / s2, (2 / 3) / s2], dtype=D)
    torch.testing.assert_close(a, exp)
    torch.testing.assert_close(algo.grpo_advantages(r, 3, scale_rewards="none"),
                               torch.tensor([2 / 3, -1 / 3, -1 / 3, -4 / 3, 2 / 3, 2 / 3], dtype=D))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_trl_formula(scale):
    g = torch.Generator().manual_seed(1)
    G, n = 4, 5
    r = torch.rand(G * n, generator=g, dtype=D)
    eps = 1e-4
    grouped = r.view(-1, G)
    mean = grouped.mean(1).repeat_interleave(G)
    adv = r - mean
    if scale == "group":
        adv = adv / (grouped.std(1).repeat_interleave(G) + eps)
    elif scale == "batch":
        adv = adv / (r.std() + eps)
    torch.testing.assert_close(algo.grpo_advantages(r, G, scale_rewards=scale, eps=eps), adv)
    # the same groups given by an (unordered) index
    perm = torch.randperm(G * n, generator=g)
    idx = torch.arange(n).repeat_interleave(G)
    out = algo.grpo_advantages(r[perm], index=idx[perm], scale_rewards=scale, eps=eps)
    torch.testing.assert_close(out, adv[perm])


def test_advantages_registry_and_errors():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    torch.testing.assert_close(algo.compute_advantages("dr_grpo", r, 2), torch.tensor([0.0, 0.0, -0.5, 0.5]))
    assert algo.grpo_advantages(torch.tensor([3.0, 5.0]), 1).abs().max() == 0  # singleton groups
    with pytest.raises(ValueError, match="divide"):
        algo.grpo_advantages(r, 3)
    with pytest.raises(ValueError, match="unknown advantage"):
        algo.compute_advantages("nope", r, 2)


def test_kl_estimators():
    lp = torch.tensor([-1.0, -2.0, -0.5], dtype=D)
    ref = torch.tensor([-1.5, -1.0, -0.5], dtype=D)
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k1"), torch.tensor([0.5, -1.0, 0.0], dtype=D))
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k2"), torch.tensor([0.125, 0.5, 0.0], dtype=D))
    k3 = torch.tensor([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1, 0.0], dtype=D)
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k3"), k3)
    # k3 is an unbiased estimator of KL(pi || ref): check on a small categorical by exact expectation
    p = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=D)
    exact = (p * (p / q).log()).sum()
    torch.testing.assert_close((p * algo.kl_k3(p.log(), q.log())).sum(), exact)
    torch.testing.assert_close((p * algo.kl_k1(p.log(), q.log())).sum(), exact)
    with pytest.raises(ValueError, match="unknown KL"):
        algo.kl_penalty(lp, ref, "k9")


def test_clipped_surrogate_hand_case():
    ratio = torch.tensor([[0.5, 1.0, 1.5, 0.5, 1.5]], dtype=D)
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0]], dtype=D)
    loss, low, high = algo.clipped_surrogate(ratio, adv, 0.2, 0.3)
    # A>0: -min(r, clip(r)); A<0: -min(-r, -clip(r)) = max(r, clip(r))
    torch.testing.assert_close(loss, torch.tensor([[-0.5, -1.0, -1.3, 0.8, 1.5]], dtype=D))
    assert low.tolist() == [[False, False, False, True, False]]
    assert high.tolist() == [[False, False, True, False, False]]


def _trl_loss(logp, old, ref, adv, mask, beta, eps_low, eps_high, loss_type, level="token"):
    """TRL GRPOTrainer's loss written out independently."""
    log_ratio = logp - old
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_ratio)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
    if beta != 0.0:
        per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type in ("bnpo", "dapo"):
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.size(0) * per_token.size(1))
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_compute_policy_loss_matches_trl(loss_type, level):
    g = torch.Generator().manual_seed(7)
    B, T = 4, 9
    logp = (-3 * torch.rand(B, T, generator=g, dtype=D)).requires_grad_()
    old = logp.detach() + 0.4 * torch.randn(B, T, generator=g, dtype=D)
    ref = logp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    adv = torch.randn(B, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(D)
    mask[0] = 0  # a fully masked row
    loss, metrics = algo.compute_policy_loss(logp, adv, mask, old, ref, beta=0.05, eps_low=0.2, eps_high=0.28,
                                             loss_type=loss_type, importance_level=level)
    (grad,) = torch.autograd.grad(loss, logp)
    lp2 = logp.detach().clone().requires_grad_()
    exp = _trl_loss(lp2, old, ref, adv, mask, 0.05, 0.2, 0.28, loss_type, level)
    exp.backward()
    torch.testing.assert_close(loss, exp)
    torch.testing.assert_close(grad, lp2.grad)
    # metrics
    ratio = torch.exp(logp.detach() - old)
    if level == "sequence":
        ratio = torch.exp(((logp.detach() - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1).expand(B, T)
    low = ((ratio < 0.8) & (adv[:, None] < 0)).to(D)
    high = ((ratio > 1.28) & (adv[:, None] > 0)).to(D)
    n = mask.sum()
    torch.testing.assert_close(metrics["clip_frac_low"], (low * mask).sum() / n)
    torch.testing.assert_close(metrics["clip_frac_high"], (high * mask).sum() / n)
    torch.testing.assert_close(metrics["ratio_mean"], (ratio * mask).sum() / n)
    torch.testing.assert_close(metrics["ratio_max"], ratio[mask.bool()].max())
    torch.testing.assert_close(metrics["ratio_min"], ratio[mask.bool()].min())
    kl = torch.exp(ref - logp.detach()) - (ref - logp.detach()) - 1
    torch.testing.assert_close(metrics["kl_mean"], (kl * mask).sum() / n)


def test_on_policy_ratio_and_dapo_global_normalizer():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(2, 5, generator=g, dtype=D).requires_grad_()
    adv = torch.tensor([1.0, -2.0], dtype=D)
    mask = torch.ones(2, 5, dtype=D)
    loss, m = algo.compute_policy_loss(logp, adv, mask, loss_type="dapo", num_items=20)
    # r == 1 everywhere: loss = -sum_t A_b / 20, d loss / d logp[b,t] = -A_b / 20
    torch.testing.assert_close(loss, -(adv.sum() * 5) / 20)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, (-adv / 20)[:, None].expand(2, 5))
    assert m["ratio_mean"].item() == 1.0 and m["clip_frac"].item() == 0.0


def test_policy_loss_errors():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="loss_type"):
        algo.compute_policy_loss(lp, torch.zeros(2), torch.ones(2, 3), loss_type="sum")
    with pytest.raises(ValueError, match="ref_logprobs"):
        algo.compute_policy_loss(lp, torch.zeros(2), torch.ones(2, 3), beta=0.1)


def test_reference_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=D)
    torch.testing.assert_close(algo.token_logprobs_ref(logits, torch.tensor([[1]]), dtype=D),
                               torch.tensor([[math.log(0.75)]], dtype=D))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(algo.entropy_ref(logits, dtype=D), torch.tensor([[h]], dtype=D))


# ---------------------------------------------------------------- masked slots and the KL clamp
# Hand values: k3(d) = e^d - d - 1. d = ref - logp = -0.1 on both live tokens below:
K3_MINUS_01 = 0.0048374180359595  # e^-0.1 + 0.1 - 1
E20 = 485165195.4097903  # e^20


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("kl_estimator", ["k1", "k2", "k3"])
def test_masked_slot_changes_neither_loss_nor_gradient(level, kl_estimator):
    """Issue case: beta 0.04, logp [[-1, -2, -100]], ref [[-1.1, -2.1, 0]], mask [[1, 1, 0]] used to
    give a NaN loss and gradient (k3 overflowed at the masked slot, then inf * 0)."""
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=D)
    adv = torch.tensor([1.0], dtype=D)
    kw = dict(beta=0.04, kl_estimator=kl_estimator, importance_level=level)
    logp = torch.tensor([[-1.0, -2.0, -100.0]], dtype=D, requires_grad=True)
    ref = torch.tensor([[-1.1, -2.1, 0.0]], dtype=D)
    old = torch.tensor([[-1.0, -2.0, 90.0]], dtype=D)  # a wild old value at the slot too
    loss, m = algo.compute_policy_loss(logp, adv, mask, old, ref, **kw)
    (grad,) = torch.autograd.grad(loss, logp)
    # the same batch with that slot's values made ordinary
    logp2 = torch.tensor([[-1.0, -2.0, -3.0]], dtype=D, requires_grad=True)
    ordinary_ref = torch.tensor([[-1.1, -2.1, -3.0]], dtype=D)
    ordinary_old = torch.tensor([[-1.0, -2.0, -3.0]], dtype=D)
    loss2, m2 = algo.compute_policy_loss(logp2, adv, mask, ordinary_old, ordinary_ref, **kw)
    (grad2,) = torch.autograd.grad(loss2, logp2)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss.item() == loss2.item()
    assert torch.equal(grad, grad2) and grad[0, 2].item() == 0.0
    for k in m:
        assert torch.equal(m[k], m2[k]), k
    # hand value: ratio 1 (old == logp on live tokens), surrogate -A = -1 per token, dapo mean of 2
    kl_live = {"k1": 0.1, "k2": 0.005, "k3": K3_MINUS_01}[kl_estimator]
    assert loss.item() == pytest.approx(-1.0 + 0.04 * kl_live, rel=1e-12)
    assert m["kl_clamp_frac"].item() == 0.0


def test_masked_slot_with_non_finite_values_and_on_policy():
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=D)
    for bad in (float("-inf"), float("nan"), float("inf")):
        logp = torch.tensor([[-1.0, -2.0, bad]], dtype=D, requires_grad=True)
        ref = torch.tensor([[-1.1, -2.1, -bad]], dtype=D)
        loss, m = algo.compute_policy_loss(logp, torch.tensor([0.0], dtype=D), mask, None, ref,
                                           beta=0.04, loss_type="grpo")
        (grad,) = torch.autograd.grad(loss, logp)
        assert loss.item() == pytest.approx(0.04 * K3_MINUS_01, rel=1e-12)
        assert grad[0, 2].item() == 0.0 and torch.isfinite(grad).all()
        assert all(torch.isfinite(v).all() for v in m.values())
    # masked_mean ignores what a zero mask covers
    assert algo.masked_mean(torch.tensor([1.0, float("inf")]), torch.tensor([1.0, 0.0])).item() == 1.0


def test_kl_log_ratio_is_clamped_to_twenty_in_every_estimator():
    lp = torch.tensor([-100.0, -1.0, 30.0, -21.0, 19.0], dtype=D)
    ref = torch.tensor([0.0, -1.0, 0.0, -1.0, 0.0], dtype=D)
    # log pi - log pi_ref = [-100, 0, 30, -20, 19] -> clamped [-20, 0, 20, -20, 19]
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k1"),
                               torch.tensor([-20.0, 0.0, 20.0, -20.0, 19.0], dtype=D))
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k2"),
                               torch.tensor([200.0, 0.0, 200.0, 200.0, 180.5], dtype=D))
    k3 = torch.tensor([E20 - 21, 0.0, math.exp(-20) + 19, E20 - 21, math.exp(-19) + 18], dtype=D)
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k3"), k3)
    assert algo.KL_LOG_RATIO_BOUND == 20.0


def test_unbounded_kl_stays_finite_and_the_clamp_is_counted():
    """Issue case: logp [[-100, -1]], ref [[0, -1]], mask all ones, beta 0.04 gave loss = inf."""
    for dtype in (D, torch.float32):
        logp = torch.tensor([[-100.0, -1.0]], dtype=dtype, requires_grad=True)
        ref = torch.tensor([[0.0, -1.0]], dtype=dtype)
        loss, m = algo.compute_policy_loss(logp, torch.tensor([0.0], dtype=dtype),
                                           torch.ones(1, 2, dtype=dtype), None, ref, beta=0.04)
        (grad,) = torch.autograd.grad(loss, logp)
        # dapo over 2 tokens: 0.04 * ((e^20 - 20 - 1) + 0) / 2; surrogate 0 (A = 0)
        assert loss.item() == pytest.approx(0.04 * (E20 - 21) / 2, rel=1e-6)
        assert m["kl_clamp_frac"].item() == 0.5
        assert m["kl_mean"].item() == pytest.approx((E20 - 21) / 2, rel=1e-6)
        # beyond the bound the KL term is constant: no gradient from it (verl's clamp)
        assert grad.tolist() == [[0.0, 0.0]]


def test_truncated_importance_sampling_hand_case():
    """token_tis: each token's surrogate weighted by min(exp(old - rollout), C), detached; on-policy
    old = logp. Hand case: log-ratios old - rollout = [ln 1.5, ln 4, 0] with C = 2 give weights
    [1.5, 2, 1] (one capped); dapo over 3 tokens, advantage 1, ratio 1: loss = -(1.5+2+1)/3."""
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    rollout = logp.detach() - torch.tensor([[math.log(1.5), math.log(4.0), 0.0]])
    loss, m = algo.compute_policy_loss(logp, torch.ones(1), torch.ones(1, 3), rollout_logp=rollout,
                                       rollout_is_cap=2.0)
    assert float(loss) == pytest.approx(-(1.5 + 2 + 1) / 3, abs=1e-6)
    assert float(m["rollout_is_weight_mean"]) == pytest.approx(4.5 / 3, abs=1e-6)
    assert float(m["rollout_is_clip_frac"]) == pytest.approx(1 / 3, abs=1e-6)
    loss.backward()  # the weight is a constant: d loss / d logp_t = -w_t / 3 (ratio' = 1)
    torch.testing.assert_close(logp.grad, -torch.tensor([[1.5, 2.0, 1.0]]) / 3)
    # a masked slot never reaches exp: a huge rollout gap there changes nothing
    rollout2 = rollout.clone()
    rollout2[0, 2] = -1e4
    loss2, _ = algo.compute_policy_loss(logp.detach(), torch.ones(1), torch.tensor([[1.0, 1, 0]]),
                                        rollout_logp=rollout2, rollout_is_cap=2.0)
    assert math.isfinite(float(loss2)) and float(loss2) == pytest.approx(-(1.5 + 2) / 2, abs=1e-6)
    # without the cap argument nothing is weighted
    plain, m3 = algo.compute_policy_loss(logp.detach(), torch.ones(1), torch.ones(1, 3),
                                         rollout_logp=rollout)
    assert float(plain) == pytest.approx(-1.0, abs=1e-6) and "rollout_is_weight_mean" not in m3


def test_registries_are_filled_by_decorators_and_drive_the_config(monkeypatch):
    """The estimators, KL kinds and loss aggregations are looked up by name in registries the
    decorated functions fill; a name registered twice is refused; the config accepts exactly the
    registered names (one more registered -> accepted, without touching config.py)."""
    from mixed_r1.algo import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS, Registry
    from mixed_r1.config import ConfigError, TrainConfig, validate

    assert set(ADVANTAGE_ESTIMATORS.names()) == {"grpo", "dr_grpo", "grpo_batch"}
    assert set(KL_ESTIMATORS.names()) == {"k1", "k2", "k3", "low_var_kl"}
    assert set(LOSS_AGGREGATIONS.names()) == {"grpo", "bnpo", "dr_grpo", "dapo"}
    assert KL_ESTIMATORS.get("low_var_kl") is KL_ESTIMATORS.get("k3")
    with pytest.raises(ValueError, match="'k3' is registered twice"):
        KL_ESTIMATORS.register("k3")(lambda a, b: a)
    with pytest.raises(ValueError, match=r"unknown loss_type 'token_sum'; expected one of"):
        algo.aggregation_weights(torch.ones(2, 3), "token_sum")

    cfg = TrainConfig()
    cfg.algo.advantage = "rloo"
    with pytest.raises(ConfigError, match="'algo.advantage': 'rloo' is not one of"):
        validate(cfg)
    monkeypatch.setattr(ADVANTAGE_ESTIMATORS, "_table", dict(ADVANTAGE_ESTIMATORS._table))

    @ADVANTAGE_ESTIMATORS.register("rloo")
    def rloo(rewards, group_size=None, **kw):  # leave-one-out baseline (Ahmadian et al., 2024)
        r = rewards.view(-1, group_size)
        return ((r - (r.sum(1, keepdim=True) - r) / (group_size - 1))).view(-1)

    validate(cfg)  # now a registered name
    torch.testing.assert_close(algo.compute_advantages("rloo", torch.tensor([1.0, 0.0]), 2),
                               torch.tensor([1.0, -1.0]))
    assert isinstance(ADVANTAGE_ESTIMATORS, Registry)


def test_task_rewards_registry_routes_every_rule_task():
    from mixed_r1.rewards.router import TASK_REWARDS, score_rule
    from mixed_r1.tasks import TASK_TYPES

    assert set(TASK_REWARDS.names()) == set(TASK_TYPES) - {"open_ended"}
    cfg = {"chart_tolerance": 0.05, "math_timeout_s": 5.0, "iou_threshold": None}
    assert score_rule(("yes_no", "<answer>Yes</answer>", "yes", None), cfg) == 1.0
    assert score_rule(("chart", "<answer>104</answer>", "100", None), cfg) == 1.0
    assert score_rule(("grounding", "[0, 0, 10, 10]", [0, 0, 10, 20], None), cfg) == 0.5
    with pytest.raises(ValueError, match="no rule-based reward for task type 'open_ended'"):
        score_rule(("open_ended", "a caption", "a caption", None), cfg)


def test_token_budget_micro_batches():
    """Longest rows first, a micro-batch closes when one more row would pass the padded budget or
    the row cap; a row longer than the budget goes alone; every row exactly once."""
    from mixed_r1.algo.batching import padded_positions, token_budget_micro_batches

    rows = [10, 11, 12, 13, 14, 15]
    lengths = [30, 100, 40, 90, 300, 35]
    out = token_budget_micro_batches(rows, lengths, max_tokens=200)
    # 300 alone (over budget); 100 + 90 (2·100 = 200); 40, 35, 30 (3·40 = 120)
    assert out == [[14], [11, 13], [12, 15, 10]]
    length_of = dict(zip(rows, lengths))
    assert padded_positions(out, length_of) == 300 + 200 + 120
    assert token_budget_micro_batches(rows, lengths, 200, max_rows=2) == [[14], [11, 13], [12, 15], [10]]
    # (prompt, completion) parts pad separately: 2 rows of 100 tokens each, but 2 · (90 + 90)
    two_part = token_budget_micro_batches([1, 2, 3], [(10, 90), (90, 10), (85, 15)], 250)
    assert two_part == [[1], [2, 3]]
    assert padded_positions(two_part, {1: (10, 90), 2: (90, 10), 3: (85, 15)}) == 100 + 2 * 105
    # packed rows cost the sum of their lengths: 100 + 90 fit 200, then 40 + 35 + 30
    assert token_budget_micro_batches(rows, lengths, 200, packed=True) == [[14], [11, 13], [12, 15, 10]]
    assert token_budget_micro_batches(rows, lengths, 230, packed=True) == [[14], [11, 13, 12], [15, 10]]
    assert padded_positions([[11, 13, 12]], length_of, packed=True) == 230
    tied = token_budget_micro_batches([1, 2, 3], [5, 5, 5], 10)
    assert tied == [[1, 2], [3]]  # ties keep the given (shuffled) order
    assert token_budget_micro_batches([], [], 10) == []
    for bad in ({"max_tokens": 0}, {"max_tokens": 5, "max_rows": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            token_budget_micro_batches([1], [1], **bad)
    with pytest.raises(ValueError, match="1 rows but 2 lengths"):
        token_budget_micro_batches([1], [1, 2], 10)


def test_shared_prefix_micro_batches():
    """Rows cut in the given order; a micro-batch costs one row per distinct prompt, prompt +
    its completions, padded to the longest such row; a prompt's rows that do not fit continue
    in the next micro-batch; the row cap holds; every row exactly once."""
    from mixed_r1.algo.batching import shared_prefix_micro_batches, shared_prefix_positions

    # prompt a: 50 tokens, completions 10, 20, 30; prompt b: 20 tokens, completions 5, 5
    rows, keys = [1, 2, 3, 4, 5], ["a", "a", "a", "b", "b"]
    lengths = [(50, 10), (50, 20), (50, 30), (20, 5), (20, 5)]
    assert shared_prefix_positions(keys, lengths) == 2 * (50 + 60)  # a's row is the widest
    assert shared_prefix_positions(["b", "b"], [(20, 5), (20, 5)]) == 30
    assert shared_prefix_micro_batches(rows, keys, lengths, max_tokens=220) == [rows]
    # 110 for a alone; adding b's first row makes 2 · 110 = 220 > 200: b starts anew
    assert shared_prefix_micro_batches(rows, keys, lengths, 200) == [[1, 2, 3], [4, 5]]
    # a's third row does not fit 90 (50 + 60): a continues alone (its prompt once more, 80),
    # b would make it 2 · 80
    assert shared_prefix_micro_batches(rows, keys, lengths, 90) == [[1, 2], [3], [4, 5]]
    assert shared_prefix_micro_batches(rows, keys, lengths, 160) == [[1, 2, 3], [4, 5]]
    assert shared_prefix_micro_batches([3, 4, 5], keys[2:], lengths[2:], 160) == [[3, 4, 5]]
    assert shared_prefix_micro_batches(rows, keys, lengths, 1000, max_rows=2) == [[1, 2], [3, 4], [5]]
    assert shared_prefix_micro_batches(rows, keys, lengths, 10) == [[1], [2], [3], [4], [5]]
    assert shared_prefix_micro_batches([], [], [], 10) == []
    with pytest.raises(ValueError, match="must be >= 1"):
        shared_prefix_micro_batches([1], ["a"], [(1, 1)], 0)
    with pytest.raises(ValueError, match="1 rows but 2 prompts"):
        shared_prefix_micro_batches([1], ["a", "b"], [(1, 1)], 10)
