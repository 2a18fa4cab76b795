"""ppo / grpo / srpo: advantages and losses against hand-computed values, the policy update on
real rollouts (masked steps, parameter changes, LoRA), log-prob parts of every family, and a
short end-to-end run of each method on one Meta-World task."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from toy_benchmark import ToyBenchmark

from vla_rl.core.benchmark import EnvConfig, group_episodes
from vla_rl.core.trajectories import Trajectories
from vla_rl.methods.on_policy import PolicyGradientConfig, policy_update
from vla_rl.policies.diffusion_chunk import DiffusionChunkPolicy
from vla_rl.policies.flow_chunk import FlowChunkPolicy
from vla_rl.policies.gaussian_chain import standard_normal_log_prob
from vla_rl.policies.token_vla import TokenVLAPolicy
from vla_rl.rl.advantages import gae, group_advantages, groups_with_contrast
from vla_rl.rl.losses import clipped_surrogate, k3_kl, masked_mean, reduce_terms
from vla_rl.rollout.engine import RolloutEngine

VOCAB = ["<pad>", "<unk>", "move", "to", "the", "left", "right"]


def tiny_flow(chunk: int = 2) -> FlowChunkPolicy:
    torch.manual_seed(0)
    return FlowChunkPolicy(2, 1, VOCAB, chunk_size=chunk, hidden=16, num_flow_steps=2)


def toy_trajectories(policy, episodes_per_state: int = 4) -> Trajectories:
    """Grouped rollouts on the toy benchmark; horizons differ by init state, so there is padding."""
    bench = ToyBenchmark(horizon=12)
    tasks = bench.tasks("train")
    episodes = group_episodes(tasks, 2, episodes_per_state, np.random.default_rng(0))
    venv = bench.make_env(tasks, EnvConfig(num_envs=4, num_workers=0, video_size=0))
    try:
        records = RolloutEngine(venv).run(policy, episodes, keep_steps=True, seed=0)
    finally:
        venv.close()
    return Trajectories.from_episodes(records)


# ---- pure math, by hand -----------------------------------------------------------------------
def test_gae_by_hand_with_poisoned_padding():
    """Episode 0: 3 steps ending in success (terminal); episode 1: 2 steps, truncated (bootstraps
    from V(final obs) = 0.4). Padding holds 1e6 and must not leak in."""
    rewards = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1e6]])
    values = torch.tensor([[0.5, 0.2], [0.6, 0.3], [0.7, 1e6]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    adv, ret = gae(rewards, values, torch.tensor([9.0, 0.4]), valid, torch.tensor([True, False]),
                   gamma=0.9, lam=0.8)  # fmt: skip
    # ep0: d2 = 1 - .7 = .3; d1 = .9*.7 - .6 = .03; d0 = .9*.6 - .5 = .04; gl = .72
    # ep1: d1 = .9*.4 - .3 = .06; d0 = .9*.3 - .2 = .07
    expected = torch.tensor([[0.04 + 0.72 * 0.246, 0.07 + 0.72 * 0.06], [0.246, 0.06], [0.3, 0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret[:, 0], expected[:, 0] + values[:, 0], atol=1e-6)
    assert ret[2, 1] == 0


def test_group_advantages_and_dynamic_sampling_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])
    adv = group_advantages(scores, groups)
    a = 0.5 / math.sqrt(1 / 3)  # mean .5, unbiased std sqrt(1/3)
    assert torch.allclose(adv[:4], torch.tensor([a, -a, -a, a]), atol=1e-5)
    assert torch.all(adv[4:] == 0)  # no contrast, and a group of one
    keep = groups_with_contrast(scores.bool(), groups, 0.1, 0.9)
    assert keep.tolist() == [True] * 4 + [False] * 5
    assert groups_with_contrast(scores.bool(), groups, 0.0, 1.0).all()


def test_episodes_per_step_follow_from_the_tasks():
    from vla_rl.methods.grpo import GRPO, GRPOConfig
    from vla_rl.methods.on_policy import auto_episodes_per_step
    from vla_rl.methods.ppo import PPO, PPOConfig

    # by hand: the least multiple of K x T that is >= 64
    assert auto_episodes_per_step(0, 1, 8) == 64  # one task: the calibrated 8 x 8
    assert auto_episodes_per_step(0, 10, 8) == 80  # MT10: one group of 8 per task
    assert auto_episodes_per_step(0, 3, 8) == 72  # 3 groups per task
    assert auto_episodes_per_step(0, 10) == 70  # ppo on MT10: 7 per task on average
    assert auto_episodes_per_step(40, 10, 4) == 40  # asked for: kept
    bench = ToyBenchmark()
    grpo = GRPO(GRPOConfig(), tiny_flow(), bench, ["left", "right"])
    assert (grpo.episodes_per_step, grpo.states_per_task) == (64, 4)
    episodes = grpo.episodes(bench.tasks("train"), np.random.default_rng(0))
    assert len(episodes) == 64 and {e.task.name for e in episodes} == {"left", "right"}
    assert PPO(PPOConfig(), tiny_flow(), bench, ["left", "right"]).episodes_per_step == 64


def test_failure_groups_with_spread_by_hand():
    from vla_rl.rl.advantages import failure_groups_with_spread

    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    success = torch.tensor([False, False, False, False, True, False])
    scores = torch.tensor([0.2, 0.5, 0.0, 0.0, 1.0, 0.3])
    # group 0: no success, scores differ -> kept; group 1: all 0 -> not; group 2 has a success
    keep = failure_groups_with_spread(scores, success, groups)
    assert keep.tolist() == [True, True, False, False, False, False]


def test_clipped_surrogate_special_cases():
    log_ratio = torch.tensor([[0.5], [-1.0], [2.0], [0.1]], requires_grad=True)
    adv = torch.tensor([[1.0], [-1.0], [-1.0], [0.0]])
    loss, clipped = clipped_surrogate(log_ratio, adv, 0.2, 0.28, dual_clip=3.0)
    # r = e^.5 > 1.28: -1.28 (clipped); r = e^-1 < .8 with A < 0: .8 (clipped);
    # r = e^2 = 7.39 with A = -1: 7.39 capped by the dual clip at 3; A = 0 gives 0.
    assert torch.allclose(loss.detach().squeeze(), torch.tensor([-1.28, 0.8, 3.0, 0.0]), atol=1e-5)
    assert clipped.squeeze().tolist() == [True, True, False, False]
    loss.sum().backward()
    assert log_ratio.grad[3] == 0 and log_ratio.grad[0] == 0  # zero advantage; clipped branch
    # Equal bounds are the symmetric PPO objective max(-A r, -A clip(r, 1 - e, 1 + e)).
    lr = torch.linspace(-1, 1, 21)[:, None]
    a = torch.linspace(-2, 2, 21)[:, None]
    sym, _ = clipped_surrogate(lr, a, 0.2, 0.2)
    r = lr.exp()
    assert torch.allclose(sym, torch.maximum(-a * r, -a * r.clamp(0.8, 1.2)))


def test_reductions_masked_mean_and_k3():
    terms = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    assert reduce_terms(terms, "sum").squeeze().tolist() == [6.0, 6.0]
    assert reduce_terms(terms, "mean").squeeze().tolist() == [2.0, 2.0]
    assert reduce_terms(terms, "token").shape == (2, 3)
    with pytest.raises(ValueError, match="valid choices"):
        reduce_terms(terms, "max")
    x = torch.tensor([1.0, float("nan"), 3.0, 1e6])
    assert masked_mean(x, torch.tensor([True, False, True, False])) == 2.0
    assert k3_kl(torch.zeros(3)).abs().max() == 0 and (k3_kl(torch.tensor([-1.0, 1.0])) > 0).all()


# ---- log-prob parts of every family ---------------------------------------------------------
@pytest.mark.parametrize("family", ["flow", "diffusion", "tokenvla"])
def test_log_prob_terms_add_up_and_honour_temperature(family):
    torch.manual_seed(0)
    policy = {
        "flow": lambda: FlowChunkPolicy(2, 1, VOCAB, chunk_size=2, hidden=16, num_flow_steps=3),
        "diffusion": lambda: DiffusionChunkPolicy(2, 1, VOCAB, chunk_size=2, hidden=16,
                                                  train_steps=10, inference_steps=3),
        "tokenvla": lambda: TokenVLAPolicy(2, 1, VOCAB, chunk_size=2, hidden=16, layers=1,
                                           heads=2, max_words=4),
    }[family]()  # fmt: skip
    policy.eval()
    obs = {
        "state": np.array([[0.1, 0.5], [-0.3, -0.5]], np.float32),
        "instruction": ["move to the right", "move to the left"],
        "task": ["right", "left"],
    }
    for temperature in (1.0, 1.7):
        policy.temperature = temperature
        with torch.no_grad():
            sample = policy.sample_actions(obs)
            terms, entropy = policy.log_prob_terms(obs, sample)
        const = (
            0.0 if family == "tokenvla" else standard_normal_log_prob(sample.extras["chain"][:, 0])
        )
        assert torch.allclose(terms.sum(-1) + const, sample.log_prob, atol=1e-4)
        assert torch.allclose(policy.log_prob(obs, sample), sample.log_prob, atol=1e-4)
        assert entropy.shape == (2,) and torch.isfinite(entropy).all()
        if temperature == 1.0:
            entropy_t1 = entropy
    assert (entropy > entropy_t1).all()  # a hotter distribution has more entropy
    assert policy.observation_features(obs).shape[0] == 2


# ---- the update on real rollouts ------------------------------------------------------------
def test_policy_update_ignores_padded_steps_and_changes_parameters():
    policy = tiny_flow()
    traj = toy_trajectories(policy)
    traj.valid[-3:, ::2] = False  # shorter episodes: their last 3 steps become padding to poison
    adv = group_advantages(traj.success.float() + torch.linspace(0, 1, traj.batch_size),
                           traj.group)[None].expand_as(traj.rewards).clone()  # fmt: skip
    keep = torch.ones(traj.batch_size, dtype=torch.bool)
    pg = PolicyGradientConfig(lr=1e-2, minibatch_size=16, reduction="token")

    def update(t, a):
        p = copy.deepcopy(policy)
        opt = torch.optim.Adam(p.parameters(), lr=pg.lr)
        metrics = policy_update(p, opt, t, a, keep, pg, None, torch.Generator().manual_seed(0))
        return p, metrics

    clean, metrics = update(traj, adv * traj.valid)
    poisoned = copy.deepcopy(traj)
    pad = ~traj.valid
    poisoned.obs["state"][pad] = 1e6
    poisoned.extras["chain"][pad] = 1e6
    dirty, _ = update(poisoned, torch.where(pad, torch.full_like(adv, 1e6), adv))
    for (name, a), b in zip(clean.named_parameters(), dirty.parameters()):
        assert torch.equal(a, b), name  # padding never enters the loss
    assert any(not torch.equal(a, c) for a, c in zip(clean.parameters(), policy.parameters()))
    assert metrics["samples"] == traj.valid.sum() and metrics["grad_norm"] > 0
    assert 0 <= metrics["clip_fraction"] <= 1 and metrics["approx_kl"] >= 0
    # Several minibatches: after the first step the ratios move off 1.
    assert metrics["approx_kl"] > 0


def test_zero_advantages_leave_the_policy_unchanged():
    policy = tiny_flow()
    traj = toy_trajectories(policy)
    p = copy.deepcopy(policy)
    opt = torch.optim.SGD(p.parameters(), lr=1.0)
    pg = PolicyGradientConfig(minibatch_size=64)
    keep = torch.ones(traj.batch_size, dtype=torch.bool)
    policy_update(p, opt, traj, torch.zeros_like(traj.rewards), keep, pg, None, torch.Generator())
    assert all(torch.equal(a, b) for a, b in zip(p.parameters(), policy.parameters()))


def test_kl_anchor_covers_dropped_groups_and_the_gradient_only_kept_ones():
    """One SGD step (lr 1, one minibatch) against the loss written out by hand: the clipped
    surrogate averaged over the kept episodes' valid steps, plus kl_coef times the k3 KL to
    the reference averaged over every episode's valid steps (dropped groups included)."""
    reference = tiny_flow()
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # a policy that has moved off its reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    traj = toy_trajectories(policy)
    traj.valid[-3:, ::2] = False
    keep = torch.zeros(traj.batch_size, dtype=torch.bool)
    keep[:2] = True  # episodes 2.. are dropped groups
    adv = (torch.linspace(-1, 1, traj.batch_size)[None] * traj.valid).clone()
    pg = PolicyGradientConfig(minibatch_size=10_000, reduction="token", kl_coef=0.5,
                              grad_clip=1e9)  # fmt: skip

    def by_hand() -> torch.nn.Module:
        p = copy.deepcopy(policy)
        t_all, b_all = torch.nonzero(traj.valid, as_tuple=True)
        with torch.no_grad():
            old, _ = p.log_prob_terms(traj.gather_obs(t_all, b_all),
                                      traj.gather_samples(t_all, b_all))  # fmt: skip
            ref, _ = reference.log_prob_terms(traj.gather_obs(t_all, b_all),
                                              traj.gather_samples(t_all, b_all))  # fmt: skip
        new, _ = p.log_prob_terms(traj.gather_obs(t_all, b_all), traj.gather_samples(t_all, b_all))
        kept = keep[b_all]
        surrogate, _ = clipped_surrogate(new[kept] - old[kept], adv[t_all, b_all][kept, None],
                                         pg.clip_low, pg.clip_high)  # fmt: skip
        loss = surrogate.mean() + pg.kl_coef * k3_kl(ref - new).mean()
        loss.backward()
        with torch.no_grad():
            for q in p.parameters():
                q -= q.grad
        return p

    p = copy.deepcopy(policy)
    opt = torch.optim.SGD(p.parameters(), lr=1.0)
    metrics = policy_update(p, opt, traj, adv, keep, pg, reference, torch.Generator())
    expected = by_hand()
    for (name, a), b in zip(p.named_parameters(), expected.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert metrics["samples"] == traj.valid[:, :2].sum()
    assert metrics["kl_samples"] == traj.valid.sum() and metrics["kl_to_reference"] > 0

    # Without a reference the dropped episodes do not enter at all: all-dropped data is a no-op
    # on them, so poisoning their steps changes nothing.
    pg0 = PolicyGradientConfig(minibatch_size=10_000, reduction="token")
    runs = []
    for poison in (False, True):
        t = copy.deepcopy(traj)
        if poison:
            t.obs["state"][:, 2:] = 1e3
        q = copy.deepcopy(policy)
        policy_update(q, torch.optim.SGD(q.parameters(), lr=1.0), t, adv, keep, pg0, None,
                      torch.Generator())  # fmt: skip
        runs.append(q)
    assert all(torch.equal(a, b) for a, b in zip(runs[0].parameters(), runs[1].parameters()))


def test_lora_update_trains_adapters_and_merges_into_a_plain_checkpoint(tmp_path):
    from vla_rl.core.policy import load_policy
    from vla_rl.rl.lora import add_lora, merge_lora

    policy = tiny_flow()
    traj = toy_trajectories(policy)
    lora = copy.deepcopy(policy)
    trainable = add_lora(lora, rank=2, alpha=4)
    assert 0 < trainable < sum(p.numel() for p in policy.parameters())
    adv = (traj.success.float() - 0.5 + torch.linspace(-1, 1, traj.batch_size))[None]
    opt = torch.optim.Adam([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    pg = PolicyGradientConfig(minibatch_size=32)
    keep = torch.ones(traj.batch_size, dtype=torch.bool)
    policy_update(lora, opt, traj, adv.expand_as(traj.rewards), keep, pg, None, torch.Generator())
    sample = traj.sample_at(0)
    obs = traj.obs_at(0)
    obs = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in obs.items()}
    with torch.no_grad():
        before_merge = lora.log_prob(obs, sample)
    merge_lora(lora)
    lora.save_pretrained(tmp_path / "merged")
    loaded = load_policy(str(tmp_path / "merged"))
    assert set(loaded.state_dict()) == set(policy.state_dict())  # the family's own names
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob(obs, sample), before_merge, atol=1e-4)
        assert not torch.allclose(policy.log_prob(obs, sample), before_merge, atol=1e-4)


# ---- end to end: each method on one Meta-World task -----------------------------------------
@pytest.mark.parametrize("method", ["ppo", "grpo", "srpo"])
def test_finetune_end_to_end(tmp_path, method):
    from vla_rl.commands.finetune import FinetuneConfig, finetune
    from vla_rl.core.policy import load_policy

    run = tmp_path / "run"
    cfg = FinetuneConfig(
        method=method, tasks=("button-press-topdown-v3",), env_steps=700, eval_every=700,
        eval_episodes=1, final_eval_episodes=1, videos=0, output_dir=str(run), logger="none",
        progress=False, env=EnvConfig(num_envs=2, num_workers=0, video_size=0, max_steps=82),
    )  # fmt: skip
    mcfg = getattr(cfg, method)
    # 82 env steps: the horizon at which the base succeeds from some initial states and fails
    # from others (measured: it succeeds at 72-80 steps from most train states), so rollouts
    # differ in outcome and the update has a signal.
    mcfg.episodes_per_step, mcfg.rollout_envs, mcfg.rollout_workers = 8, 4, 0
    mcfg.lr = 1e-3  # a visible change in two steps
    mcfg.minibatch_size = 16
    if method == "ppo":
        mcfg.critic_warmup_steps = 1
    else:
        # A group's members share their initial state, and its outcome mostly follows it: with
        # 2 groups per step both could be all-success or all-failure (measured with the
        # per-episode noise streams: 0 of 2 groups kept in each of 2 steps), so 4 groups of 4.
        mcfg.group_size, mcfg.episodes_per_step = 4, 16
        cfg.env_steps = cfg.eval_every = 1400  # still two RL steps
    if method == "srpo":
        mcfg.progress.frames, mcfg.progress.frame_size = 4, 32
    res = finetune(cfg)
    saved = json.loads((run / "results.json").read_text())
    assert saved["method"] == method and saved["env_steps"] >= 700 and saved["rl_steps"] >= 2
    assert saved["config"][method]["reduction"] == ("mean" if method == "ppo" else "token")
    assert len(saved["curve"]) == 2 and (run / "learning_curve.png").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "train/rollout_s" in x]
    assert all("train/reward_s" in x and "train/update_s" in x for x in train)
    assert any("train/clip_fraction" in x and "train/entropy" in x for x in train)
    assert any(x.get("train/grad_norm", 0) > 0 for x in train)
    base = load_policy("metaworld-flow")
    tuned = load_policy(res["policy_dir"])
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), tuned.parameters()))
    if method == "grpo":  # resume: the run continues from its checkpoint
        cfg.env_steps, cfg.resume = saved["env_steps"] + 1, True
        res2 = finetune(cfg)
        assert res2["rl_steps"] > saved["rl_steps"] and res2["curve"][:2] == saved["curve"]


def test_finetune_rejects_bad_settings(tmp_path):
    from vla_rl.commands.finetune import FinetuneConfig, finetune
    from vla_rl.core.config import ConfigError

    cfg = FinetuneConfig(method="grpo", output_dir=str(tmp_path / "r"), logger="none")
    cfg.grpo.group_size = 1
    with pytest.raises(ConfigError, match="group-size"):
        finetune(cfg)
    cfg = FinetuneConfig(method="ppo", output_dir=str(tmp_path / "r"), logger="none")
    cfg.ppo.reduction = "max"
    with pytest.raises(ConfigError, match="sum, mean, token"):
        finetune(cfg)
    cfg = FinetuneConfig(method="srpo", output_dir=str(tmp_path / "r"), logger="none")
    cfg.srpo.progress.normalization = "zscore"
    with pytest.raises(ValueError, match="minmax, rank"):
        finetune(cfg)
    cfg = FinetuneConfig(method="srpo", base="scripted", output_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="per-part log-probs"):
        finetune(cfg)
    assert not (tmp_path / "r").exists()
