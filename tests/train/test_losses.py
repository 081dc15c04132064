"""Preference losses against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf.train import losses


def _lp(values):
    return jnp.asarray(values, jnp.float32)


def test_sequence_score_hand_computed():
    # 1 pair, 2 agents, 2 steps; agent 1 valid only at step 0.
    lp = _lp([[[-1.0, -2.0], [-3.0, -4.0]]])
    valid = jnp.asarray([[[True, True], [True, False]]])
    cfg = losses.ScoreConfig(alpha=0.5, gamma=0.9, normalize="sum")
    # 0.5 * (-1 + 0.9 * -2 + -3) = 0.5 * -5.8
    np.testing.assert_allclose(losses.sequence_score(lp, valid, cfg), [-2.9], rtol=1e-6)
    agents = losses.ScoreConfig(alpha=0.5, gamma=0.9, normalize="agents")
    np.testing.assert_allclose(losses.sequence_score(lp, valid, agents), [-2.9 / 2], rtol=1e-6)
    tokens = losses.ScoreConfig(alpha=0.5, gamma=0.9, normalize="tokens")
    np.testing.assert_allclose(losses.sequence_score(lp, valid, tokens), [-2.9 / 3], rtol=1e-6)


def test_cpl_loss_hand_computed():
    score = losses.ScoreConfig(alpha=1.0, gamma=1.0, normalize="sum")
    cfg = losses.CPLConfig(score=score, conservative_lambda=0.5)
    preferred = _lp([[[-1.0, -1.0]], [[-4.0, -4.0]]])  # S+ = -2, -8
    unpreferred = _lp([[[-2.0, -2.0]], [[-1.0, -1.0]]])  # S- = -4, -2
    valid = jnp.ones((2, 1, 2), bool)
    loss, m = losses.cpl_loss(preferred, valid, unpreferred, valid, cfg)
    # pair 1: -log(e^-2 / (e^-2 + e^(0.5*-4))) = log 2 ; pair 2: -log(e^-8/(e^-8+e^-1)) = log(1+e^7)
    expected = (math.log(2.0) + math.log1p(math.exp(7.0))) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert int(m["pref_accuracy_sum"]) == 1 and int(m["pairs"]) == 2
    np.testing.assert_allclose(m["nll_preferred_sum"], 10.0)
    assert int(m["tokens_preferred"]) == 4


def test_cpl_bc_term_and_masking():
    score = losses.ScoreConfig(alpha=1.0, normalize="sum")
    preferred = _lp([[[-1.0, -50.0]]])
    unpreferred = _lp([[[-2.0, -2.0]]])
    valid_preferred = jnp.asarray([[[True, False]]])  # the -50 is masked out
    valid_unpreferred = jnp.ones((1, 1, 2), bool)
    base, _ = losses.cpl_loss(preferred, valid_preferred, unpreferred, valid_unpreferred,
                              losses.CPLConfig(score=score, conservative_lambda=1.0))
    np.testing.assert_allclose(base, -math.log(1 / (1 + math.exp(-4 + 1))), rtol=1e-6)
    with_bc, _ = losses.cpl_loss(preferred, valid_preferred, unpreferred, valid_unpreferred,
                                 losses.CPLConfig(score=score, conservative_lambda=1.0, bc_weight=0.5))
    np.testing.assert_allclose(with_bc - base, 0.5 * 1.0, rtol=1e-6)


def test_lambda_must_be_in_unit_interval():
    with pytest.raises(ValueError, match="conservative_lambda"):
        losses.CPLConfig(conservative_lambda=0.0)
    with pytest.raises(ValueError, match="normalize"):
        losses.ScoreConfig(normalize="mean")


def test_afd_prefers_expert_over_every_sample():
    score = losses.ScoreConfig(alpha=1.0, normalize="sum")
    cfg = losses.CPLConfig(score=score, conservative_lambda=1.0)
    expert = _lp([[[-1.0]]])  # [P=1, A=1, S=1]
    gen = _lp([[[[-1.0]], [[-3.0]]]])  # [P=1, K=2, A=1, S=1]
    v_e, v_g = jnp.ones((1, 1, 1), bool), jnp.ones((1, 2, 1, 1), bool)
    loss, m = losses.afd_loss(expert, v_e, gen, v_g, cfg)
    expected = (math.log(2.0) + math.log1p(math.exp(-2.0))) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert int(m["pairs"]) == 2


def test_sft_and_dpo_hand_computed():
    lp = _lp([[[-1.0, -3.0]]])
    valid = jnp.ones((1, 1, 2), bool)
    loss, _ = losses.sft_loss(lp, valid)
    np.testing.assert_allclose(loss, 2.0)
    preferred, unpreferred = _lp([[[-1.0]]]), _lp([[[-2.0]]])
    ref_preferred, ref_unpreferred = _lp([[[-1.5]]]), _lp([[[-1.5]]])
    v = jnp.ones((1, 1, 1), bool)
    loss, m = losses.dpo_loss(preferred, v, unpreferred, v, ref_preferred, ref_unpreferred, beta=2.0)
    # margin = (-1 + 1.5) - (-2 + 1.5) = 1 ; loss = -log sigmoid(2)
    np.testing.assert_allclose(loss, math.log1p(math.exp(-2.0)), rtol=1e-6)
    assert int(m["pref_accuracy_sum"]) == 1


def test_token_kl():
    logits_p = jnp.log(jnp.asarray([[0.5, 0.5], [0.9, 0.1]]))
    logits_r = jnp.log(jnp.asarray([[0.5, 0.5], [0.5, 0.5]]))
    kl_sum, n = losses.token_kl(logits_p, logits_r, jnp.asarray([True, True]))
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    np.testing.assert_allclose(kl_sum, expected, rtol=1e-5)
    assert int(n) == 2


def test_ranked_cpl_loss_equals_a_hand_computed_value():
    """Three rollouts of one scene, ranked 0 < 2 < 1: the pairs (0, 1), (0, 2), (2, 1), each -log sigmoid(S+ - l S-)."""
    # One agent, two token steps; score = alpha * sum of log-probs ('sum' normalization, alpha 1, gamma 1).
    lp = jnp.asarray([[[[-1.0, -0.5]], [[-2.0, -1.0]], [[-0.2, -0.3]]]])  # [B=1, R=3, A=1, S=2]
    valid = jnp.ones(lp.shape, bool)
    distance = jnp.asarray([[0.1, 0.3, 0.2]])
    cfg = losses.CPLConfig(score=losses.ScoreConfig(alpha=1.0, gamma=1.0, normalize="sum"), conservative_lambda=0.5)
    loss, m = losses.ranked_cpl_loss(lp, valid, distance, cfg)
    s = [-1.5, -3.0, -0.5]
    nll = lambda x: -math.log(1.0 / (1.0 + math.exp(-x)))
    want = (nll(s[0] - 0.5 * s[1]) + nll(s[0] - 0.5 * s[2]) + nll(s[2] - 0.5 * s[1])) / 3
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert int(m["pairs"]) == 3
    # Accuracy (lambda = 1): S_0 > S_1 yes, S_0 > S_2 no, S_2 > S_1 yes.
    assert int(m["pref_accuracy_sum"]) == 2
    # Better half (rank < 1): rollout 0; worse half (rank >= 2): rollout 1.
    assert float(m["nll_preferred_sum"]) == pytest.approx(1.5) and int(m["tokens_preferred"]) == 2
    assert float(m["nll_unpreferred_sum"]) == pytest.approx(3.0) and int(m["tokens_unpreferred"]) == 2
    # Ties make no pair; with R = 2 the ranked loss is the pair loss.
    tied, m_tied = losses.ranked_cpl_loss(lp[:, :2], valid[:, :2], jnp.asarray([[0.5, 0.5]]), cfg)
    assert int(m_tied["pairs"]) == 0 and float(tied) == 0.0
    two, _ = losses.ranked_cpl_loss(lp[:, :2], valid[:, :2], distance[:, :2], cfg)
    pair, _ = losses.cpl_loss(lp[0, :1], valid[0, :1], lp[0, 1:2], valid[0, 1:2], cfg)
    assert float(two) == pytest.approx(float(pair), rel=1e-6)


def _nll_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_per_agent_ranked_loss_equals_a_hand_computed_value():
    """Agent credit: each agent ranks the rollouts by its own distance and is scored alone,
    S_i = alpha * sum_t gamma^t log pi(a_t^i); every (agent, better, worse) is one CPL term."""
    # [B=1, R=3, A=2, S=2]; alpha 0.5, gamma 0.5, 'agents' normalization (per agent: no division).
    lp = _lp([[[[-1.0, -2.0], [-0.5, -0.5]],
               [[-2.0, -2.0], [-1.0, -3.0]],
               [[-0.2, -0.4], [-9.0, -9.0]]]])
    valid = jnp.ones(lp.shape, bool)
    score = losses.ScoreConfig(alpha=0.5, gamma=0.5, normalize="agents")
    s = {(r, a): 0.5 * (lp[0, r, a, 0] + 0.5 * lp[0, r, a, 1]) for r in range(3) for a in range(2)}
    np.testing.assert_allclose(losses.agent_scores(lp, valid, score)[0],
                               [[s[r, 0], s[r, 1]] for r in range(3)], rtol=1e-6)
    # Agent 0 ranks 0 < 2 < 1; agent 1 ranks 1 < 0, and its distance in rollout 2 is not counted.
    distance = jnp.asarray([[[0.1, 0.5], [0.3, 0.4], [0.2, 0.0]]])
    counted = jnp.asarray([[[True, True], [True, True], [True, False]]])
    cfg = losses.CPLConfig(score=score, conservative_lambda=0.5, credit="agent")
    loss, m = losses.ranked_cpl_loss(lp, valid, distance, cfg, counted=counted)
    terms = [_nll_sigmoid(float(s[i, a] - 0.5 * s[j, a])) for a, i, j in ((0, 0, 1), (0, 0, 2), (0, 2, 1), (1, 1, 0))]
    assert float(loss) == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert int(m["pairs"]) == 4
    assert int(m["pref_accuracy_sum"]) == sum(float(s[i, a]) > float(s[j, a])
                                               for a, i, j in ((0, 0, 1), (0, 0, 2), (0, 2, 1), (1, 1, 0)))
    # Better half of each agent's ranking (rank < n // 2): agent 0 rollout 0, agent 1 rollout 1 (of 2 counted).
    assert float(m["nll_preferred_sum"]) == pytest.approx(3.0 + 4.0) and int(m["tokens_preferred"]) == 4
    # The evaluated-agent weight weighs agent 1's comparison twice.
    weighted, _ = losses.ranked_cpl_loss(lp, valid, distance, cfg, agent_weight=jnp.asarray([[1.0, 2.0]]),
                                         counted=counted)
    assert float(weighted) == pytest.approx((sum(terms[:3]) + 2 * terms[3]) / 5, rel=1e-6)
    with pytest.raises(ValueError, match="per-agent distances"):
        losses.ranked_cpl_loss(lp, valid, distance[..., 0], cfg)
    with pytest.raises(ValueError, match="credit"):
        losses.cpl_loss(lp[0, :1], valid[0, :1], lp[0, 1:2], valid[0, 1:2], cfg)


def test_agent_weights_in_the_scene_score():
    # 1 sequence, 2 agents, 1 step: agent 1 weighted 3x.
    lp = _lp([[[-1.0], [-5.0]]])
    valid = jnp.ones(lp.shape, bool)
    w = jnp.asarray([[1.0, 3.0]])
    agents = losses.ScoreConfig(alpha=1.0, normalize="agents")
    np.testing.assert_allclose(losses.sequence_score(lp, valid, agents, w), [(-1.0 - 15.0) / 4], rtol=1e-6)
    np.testing.assert_allclose(losses.sequence_score(lp, valid, losses.ScoreConfig(alpha=1.0, normalize="sum"), w),
                               [-16.0], rtol=1e-6)
    # Unit weights are the unweighted score.
    np.testing.assert_allclose(losses.sequence_score(lp, valid, agents, jnp.ones_like(w)),
                               losses.sequence_score(lp, valid, agents), rtol=1e-6)
    preferred, unpreferred = lp, _lp([[[-2.0], [-1.0]]])
    cfg = losses.CPLConfig(score=agents, conservative_lambda=1.0)
    loss, _ = losses.cpl_loss(preferred, valid, unpreferred, valid, cfg, agent_weight=w)
    assert float(loss) == pytest.approx(_nll_sigmoid(-4.0 - (-5.0 / 4)), rel=1e-6)


def test_top_k_by_bottom_k_is_the_ranked_loss_on_two_levels():
    """Every (closest, farthest) cross pair: the ranked loss with the top drawn at distance 0, the bottom at 1."""
    lp = _lp([[[[-1.0]], [[-2.0]], [[-3.0]], [[-4.0]]]])  # [1, R=4, A=1, S=1]: S = -1, -2, -3, -4
    valid = jnp.ones(lp.shape, bool)
    cfg = losses.CPLConfig(score=losses.ScoreConfig(alpha=1.0, normalize="sum"), conservative_lambda=0.5)
    loss, m = losses.ranked_cpl_loss(lp, valid, jnp.asarray([[0.0, 0.0, 1.0, 1.0]]), cfg)
    want = sum(_nll_sigmoid(-p + 0.5 * n) for p in (1.0, 2.0) for n in (3.0, 4.0)) / 4
    assert float(loss) == pytest.approx(want, rel=1e-6) and int(m["pairs"]) == 4
