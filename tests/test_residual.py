"""Residual RL (ResFiT): n-step targets, buffers, the zero-initialised residual, the learner's
updates, persistence, and a short end-to-end `finetune` on one Meta-World task."""

import json

import numpy as np
import pytest
import torch
from toy_benchmark import ToyBenchmark
from toy_policies import GreedyToyPolicy

from vla_rl.core.benchmark import EnvConfig, EpisodeSpec, random_episode
from vla_rl.core.policy import load_policy
from vla_rl.core.slots import SlotEnv, SlotStep, step_slots
from vla_rl.methods.residual.base_action_queue import BaseActionQueue
from vla_rl.methods.residual.config import ResidualConfig
from vla_rl.methods.residual.learner import Residual
from vla_rl.methods.residual.policy import ResidualPolicy
from vla_rl.methods.residual.transitions import (
    SlotEpisodes,
    episode_transitions,
    transition_fields,
)
from vla_rl.policies.flow_chunk import FlowChunkPolicy
from vla_rl.policies.obs_encoder import InstructionTokenizer
from vla_rl.rl.replay_buffer import ReplayBuffer, sample_mixed
from vla_rl.rl.returns import n_step_returns
from vla_rl.rollout.engine import RolloutEngine


def test_n_step_returns_by_hand():
    # Terminated episode, rewards 0, 0, 1; n = 2, gamma = 0.9.
    ret, nxt, disc = n_step_returns(np.array([0.0, 0.0, 1.0]), True, 2, 0.9)
    np.testing.assert_allclose(ret, [0.0, 0.9, 1.0])  # t=1: 0 + 0.9 * 1; t=2: one reward left
    np.testing.assert_array_equal(nxt, [2, 3, 3])
    np.testing.assert_allclose(disc, [0.81, 0.0, 0.0])  # nothing bootstraps past success
    # Truncated episode: the final state is not terminal, so it is bootstrapped with gamma^k.
    ret, nxt, disc = n_step_returns(np.array([1.0, 0.0, 0.0]), False, 2, 0.9)
    np.testing.assert_allclose(ret, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(nxt, [2, 3, 3])
    np.testing.assert_allclose(disc, [0.81, 0.81, 0.9])
    # n = 1 is the one-step TD target.
    ret, nxt, disc = n_step_returns(np.array([0.5, 2.0]), True, 1, 0.5)
    np.testing.assert_allclose(ret, [0.5, 2.0])
    np.testing.assert_allclose(disc, [0.5, 0.0])


def test_episode_transitions_index_the_right_next_state():
    states = np.arange(5, dtype=np.float32)[:, None]  # s_0..s_4 (4 steps)
    bases = states * 10
    rows = episode_transitions(states, bases, np.zeros((4, 1), np.float32),
                               np.array([0, 0, 0, 1.0]), True, 3, 3, 0.5)  # fmt: skip
    np.testing.assert_array_equal(rows["next_state"][:, 0], [3, 4, 4, 4])
    np.testing.assert_array_equal(rows["next_base"][:, 0], [30, 40, 40, 40])
    np.testing.assert_allclose(rows["ret"], [0, 0.25, 0.5, 1.0])
    assert (rows["task"] == 3).all()


def test_replay_buffer_ring_and_save_load(tmp_path):
    buf = ReplayBuffer(5, {"x": ((), np.int64)})
    buf.add({"x": np.arange(3)})
    buf.add({"x": np.arange(3, 7)})  # wraps: rows hold 5, 6, 2, 3, 4
    assert len(buf) == 5 and sorted(buf.data["x"]) == [2, 3, 4, 5, 6]
    buf.save(tmp_path / "b.safetensors")
    other = ReplayBuffer(5, {"x": ((), np.int64)})
    other.load(tmp_path / "b.safetensors")
    assert len(other) == 5 and other.cursor == buf.cursor
    np.testing.assert_array_equal(other.data["x"], buf.data["x"])
    with pytest.raises(ValueError):
        buf.add({"y": np.arange(2)})
    empty = ReplayBuffer(5, {"x": ((2,), np.float32)})  # a checkpoint before any episode ended
    empty.save(tmp_path / "e.safetensors")
    empty.load(tmp_path / "e.safetensors")
    assert len(empty) == 0 and empty.cursor == 0
    with pytest.raises(ValueError, match="lacks"):
        ReplayBuffer(5, {"y": ((), np.int64)}).load(tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="reserved"):
        ReplayBuffer(5, {"_cursor": ((), np.int64)})


def test_demo_online_sampling_ratio():
    fields = {"src": ((), np.int64)}
    online, demos = ReplayBuffer(100, fields), ReplayBuffer(100, fields)
    online.add({"src": np.zeros(50, np.int64)})
    demos.add({"src": np.ones(20, np.int64)})
    rng = np.random.default_rng(0)
    batch = sample_mixed(online, demos, 256, 0.5, rng)
    assert len(batch["src"]) == 256 and batch["src"].sum() == 128
    assert sample_mixed(online, demos, 10, 0.3, rng)["src"].sum() == 3
    assert sample_mixed(online, None, 64, 0.5, rng)["src"].sum() == 0  # no demos: all online


def make_residual(base, task_names=("left", "right"), **kwargs):
    torch.manual_seed(0)
    return ResidualPolicy(base, 2, 1, list(task_names), [-1.0], [1.0], **({"hidden": 32} | kwargs))


def tiny_flow_base():
    torch.manual_seed(1)
    vocab = InstructionTokenizer.train(["move to the left"]).vocab
    return FlowChunkPolicy(state_dim=2, action_dim=1, vocab=vocab, chunk_size=4, hidden=16,
                           num_flow_steps=3)  # fmt: skip


def test_zero_residual_reproduces_the_base_exactly():
    """An untrained ResidualPolicy on the base-action queue takes exactly the actions the base
    takes when its chunks run open-loop, so both roll out identical episodes."""
    bench = ToyBenchmark(horizon=25)
    base = GreedyToyPolicy(chunk_size=4, noise=0.3)
    residual = make_residual(base, base_deterministic=False)
    episodes = [EpisodeSpec(t, i) for t in bench.tasks("eval") for i in t.init_ids[:3]]
    cfg = EnvConfig(num_envs=1, num_workers=0)

    def run(policy, deterministic):
        venv = policy.wrap_env(bench.make_env(bench.tasks("eval"), cfg))
        engine = RolloutEngine(venv, 1)
        try:  # one episode per call: each starts from the same torch seed in both runs
            return [
                engine.run(policy, [ep], keep_steps=True, seed=3, deterministic=deterministic)[0]
                for ep in episodes
            ]
        finally:
            venv.close()

    # The base samples its noisy chunks in both runs (the queue asks it non-deterministically);
    # the residual adds no exploration noise of its own.
    direct, wrapped = run(base, False), run(residual, True)
    for a, b in zip(direct, wrapped):
        assert a.env_steps == b.env_steps and a.success == b.success
        base_actions = np.concatenate([s.actions[0].numpy() for s in a.samples])[: a.env_steps]
        res_actions = np.concatenate([s.actions[0].numpy() for s in b.samples])
        np.testing.assert_array_equal(base_actions.clip(-1, 1), res_actions)


def test_base_action_queue_is_a_slot_env():
    """The queue satisfies the SlotEnv protocol itself, forwarding what it does not change, and
    has no catch-all passthrough (a member outside the protocol is an AttributeError)."""
    bench = ToyBenchmark(horizon=10)
    venv = bench.make_env(bench.tasks("train"), EnvConfig(num_envs=2, num_workers=0))
    queue = BaseActionQueue(venv, GreedyToyPolicy(chunk_size=3))
    try:
        assert isinstance(queue, SlotEnv)
        assert queue.num_envs == 2 and queue.single_action_space == venv.single_action_space
        episodes = [EpisodeSpec(t, t.init_ids[0]) for t in bench.tasks("train")]
        queue.reset_slots([0, 1], episodes)
        assert queue.episodes == venv.episodes == episodes
        obs = queue.observe([0, 1])
        assert obs["base_action"].shape == (2, 1) and queue.base_calls == 1
        results = step_slots(queue, [0, 1], obs["base_action"][:, None])
        assert [r.steps for r in results] == [1, 1] and [len(q) for q in queue.queues] == [2, 2]
        with pytest.raises(AttributeError):
            queue.step  # noqa: B018  (gym's step is not part of the protocol)
    finally:
        queue.close()


def test_random_episode_draws_the_task_then_its_initial_state():
    tasks = ToyBenchmark().tasks("train")
    draws = np.random.default_rng(7)
    task = tasks[int(draws.integers(len(tasks)))]
    expected = EpisodeSpec(task, int(task.init_ids[int(draws.integers(len(task.init_ids)))]))
    rng = np.random.default_rng(7)
    assert random_episode(tasks, rng) == expected
    assert rng.bit_generator.state == draws.bit_generator.state  # exactly two draws


def test_slot_episodes_turn_finished_episodes_into_transitions():
    policy = make_residual(GreedyToyPolicy())
    store = SlotEpisodes(policy, 2, n_step=2, gamma=0.5)
    step = lambda term, trunc: SlotStep({}, np.zeros(1), 1, term, trunc, term, None)  # noqa: E731
    obs = [{"state": np.full((2, 2), float(t), np.float32), "task": ["left", "right"],
            "base_action": np.full((2, 1), 0.1 * t, np.float32)} for t in range(3)]  # fmt: skip
    units = [torch.full((2, 1), 0.5 * t) for t in range(3)]
    assert (
        store.record(obs[0], units[0], units[0], units[0].numpy(), [step(False, False)] * 2, obs[1])
        == []
    )
    steps = [step(True, False), step(False, False)]
    done = store.record(obs[1], units[1], units[1], units[1].numpy(), steps, obs[2])
    assert [(f.slot, f.success) for f in done] == [(0, True)]
    rows = done[0].transitions
    np.testing.assert_array_equal(rows["state"][:, 0], [0, 1])
    np.testing.assert_allclose(rows["ret"], [0.5, 1.0])  # reward 1 on the last step
    np.testing.assert_allclose(rows["discount"], [0, 0])  # success: no bootstrap
    assert (rows["task"] == 0).all() and set(rows) == set(transition_fields(2, 1))
    assert len(store.episodes[0].states) == 0 and len(store.episodes[1].states) == 2


def test_slot_episodes_drop_an_episode_whose_env_was_lost():
    policy = make_residual(GreedyToyPolicy())
    store = SlotEpisodes(policy, 2, n_step=2, gamma=0.5)
    step = lambda term: SlotStep({}, np.zeros(1), 1, term, False, term, None)  # noqa: E731
    obs = [{"state": np.full((2, 2), float(t), np.float32), "task": ["left", "right"],
            "base_action": np.full((2, 1), 0.1 * t, np.float32)} for t in range(3)]  # fmt: skip
    units = [torch.full((2, 1), 0.5 * t) for t in range(3)]
    store.record(obs[0], units[0], units[0], units[0].numpy(), [step(False)] * 2, obs[1])
    store.drop([1])  # slot 1's worker died: its episode so far is gone
    done = store.record(
        obs[1], units[1], units[1], units[1].numpy(), [step(False), SlotStep.lost_slot()], obs[2]
    )
    assert done == [] and len(store.episodes[0].states) == 2
    assert len(store.episodes[1].states) == 0  # nothing of the lost step was kept either


def test_residual_policy_needs_the_base_action_queue():
    policy = make_residual(GreedyToyPolicy())
    with pytest.raises(ValueError, match="wrap_env"):
        policy.sample_actions({"state": np.zeros((1, 2), np.float32), "instruction": ["x"],
                               "task": ["left"]})  # fmt: skip


def fixed_batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "state": rng.normal(size=(n, 2)).astype(np.float32),
        "task": rng.integers(0, 2, n),
        "base": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
        "ret": (rng.random(n) < 0.3).astype(np.float32),
        "next_state": rng.normal(size=(n, 2)).astype(np.float32),
        "next_base": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
        "discount": np.full(n, 0.97, np.float32),
    }


def test_critic_loss_falls_on_a_fixed_batch():
    torch.set_num_threads(1)
    agent = Residual(make_residual(tiny_flow_base()), ResidualConfig(hidden=32, num_critics=4))
    batch = fixed_batch()

    def loss():
        torch.manual_seed(0)  # same smoothing noise and REDQ subset each time
        with torch.no_grad():
            return agent.critic_loss(agent._tensors(batch))[0].item()

    before = loss()
    for _ in range(150):
        agent.update(batch, update_actor=False)
    assert loss() < 0.5 * before


def test_actor_update_changes_the_residual_not_the_base():
    base = tiny_flow_base()
    policy = make_residual(base)
    agent = Residual(policy, ResidualConfig(hidden=32, num_critics=2))
    batch = fixed_batch()
    for _ in range(20):  # give the critic an action gradient first
        agent.update(batch, update_actor=False)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    actor_before = {k: v.clone() for k, v in policy.actor.state_dict().items()}
    critic_before = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    metrics = agent.update(batch, update_actor=True)
    assert "actor_loss" in metrics
    assert not torch.equal(actor_before["6.weight"], policy.actor.state_dict()["6.weight"])
    assert any(not torch.equal(v, agent.critic.state_dict()[k]) for k, v in critic_before.items())
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in base_before.items())
    assert not any(p.requires_grad for p in base.parameters())


def test_residual_policy_save_load_round_trip(tmp_path):
    policy = make_residual(tiny_flow_base(), action_scale=0.3)
    with torch.no_grad():
        for p in policy.actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    policy.fit_state_stats(np.random.default_rng(0).normal(2.0, 3.0, size=(100, 2)))
    policy.save_pretrained(tmp_path / "res")
    loaded = load_policy(str(tmp_path / "res"))
    assert isinstance(loaded, ResidualPolicy)
    obs = {"state": np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32),
           "instruction": ["move to the left"] * 6, "task": ["left", "right", "x"] * 2,
           "base_action": np.linspace(-1, 1, 6, dtype=np.float32)[:, None]}  # fmt: skip
    a = policy.sample_actions(obs, deterministic=True).actions
    b = loaded.sample_actions(obs, deterministic=True).actions
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[:, 0], torch.as_tensor(obs["base_action"]))  # residual is non-zero
    for k, v in policy.base.state_dict().items():  # the base travels inside the checkpoint
        torch.testing.assert_close(v, loaded.base.state_dict()[k], rtol=0, atol=0)


def test_transition_fields_match_episode_transitions():
    zeros = np.zeros((3, 2), np.float32)
    rows = episode_transitions(zeros, zeros[:, :1], zeros[:2, :1], np.zeros(2), False, 0, 3, 0.99)
    assert set(rows) == set(transition_fields(2, 1))


def test_finetune_end_to_end_and_resume(tmp_path):
    """A few hundred env steps of residual RL on one Meta-World task: results, curve, policy
    loadable by eval; then --resume continues the run from its checkpoint."""
    from vla_rl.commands.finetune import FinetuneConfig, finetune

    run = tmp_path / "run"
    cfg = FinetuneConfig(
        tasks=("drawer-close-v3",), env_steps=240, eval_every=240, eval_episodes=1,
        final_eval_episodes=1, videos=0, output_dir=str(run), logger="none", progress=False,
        env=EnvConfig(num_envs=2, num_workers=0, video_size=0, max_steps=120),
    )  # fmt: skip
    cfg.residual = ResidualConfig(learning_starts=80, critic_warmup_updates=5, batch_size=32,
                                  hidden=32, num_critics=2, save_every=120)  # fmt: skip
    res = finetune(cfg)
    saved = json.loads((run / "results.json").read_text())
    assert saved["env_steps"] >= 240 and saved["updates"] > 0
    assert saved["demo_transitions"] > 0  # one scripted demo, base actions computed on it
    assert "base" in saved and "success_rate" in saved["base"]
    assert [p["env_steps"] for p in saved["curve"]][0] == 0 and len(saved["curve"]) == 2
    assert saved["config"]["residual"]["utd"] == 2 and saved["provenance"]["git_commit"]
    assert (run / "learning_curve.png").is_file() and (run / "metrics.jsonl").is_file()
    policy = load_policy(res["policy_dir"])
    assert isinstance(policy, ResidualPolicy) and policy.state_std.min() > 0
    files = {p.name for p in (run / "checkpoint").iterdir()}  # safetensors + JSON, no pickle
    assert {"tensors.safetensors", "tree.json", "state.json", "policy",
            "online_buffer.safetensors"} <= files and "learner.pt" not in files  # fmt: skip
    # Resume to 480 steps: the run continues from the checkpoint, not from scratch.
    cfg.env_steps, cfg.resume = 480, True
    res2 = finetune(cfg)
    assert res2["env_steps"] >= 480 and res2["updates"] > saved["updates"]
    assert len(res2["curve"]) == 3 and res2["curve"][1] == saved["curve"][1]


def test_critic_ensemble_heads_and_polyak_by_hand():
    from torch import nn

    from vla_rl.rl.critics import CriticEnsemble, polyak

    torch.manual_seed(0)
    critic = CriticEnsemble(4, 5, 8)
    feat, action = torch.randn(6, 3), torch.randn(6, 2)
    full = critic(feat, action)
    assert full.shape == (4, 6)
    heads = torch.tensor([3, 1])  # REDQ's subset: the same values as those rows of all heads
    torch.testing.assert_close(critic(feat, action, heads), full[heads], rtol=1e-6, atol=1e-6)
    target, source = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(1.0)
        for p in source.parameters():
            p.fill_(3.0)
    polyak(target, source, 0.25)  # 0.75 * 1 + 0.25 * 3
    assert all(torch.equal(p, torch.full_like(p, 1.5)) for p in target.parameters())


def test_actor_step_computes_no_critic_weight_gradients():
    """The actor's loss goes through the critics; their weight gradients are not needed there
    (only the critic step uses them) and are not computed: one per critic parameter per update,
    from the critic step."""
    agent = Residual(make_residual(tiny_flow_base()), ResidualConfig(hidden=32, num_critics=2))
    batch = fixed_batch()
    calls = []
    for p in agent.critic.parameters():
        p.register_hook(lambda grad: calls.append(1))
    agent.update(batch, update_actor=False)
    critic_only = len(calls)
    assert critic_only == len(list(agent.critic.parameters()))
    actor_before = [p.detach().clone() for p in agent.policy.actor.parameters()]
    agent.update(batch, update_actor=True)
    assert len(calls) == 2 * critic_only  # the actor step added none
    assert any(not torch.equal(a, p) for a, p in zip(actor_before, agent.policy.actor.parameters()))
