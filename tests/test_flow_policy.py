"""The flow-matching chunk policy: exact chain log-prob, BC, persistence, images, tokenizer."""

import numpy as np
import pytest
import torch

from vla_rl.core.policy import load_policy
from vla_rl.core.types import ActionSample
from vla_rl.policies.flow_chunk import FlowChunkPolicy, gaussian_log_prob
from vla_rl.policies.obs_encoder import InstructionTokenizer

INSTRUCTIONS = ["reach the goal", "push the puck to the goal"]


def make_policy(**kwargs):
    torch.manual_seed(0)
    vocab = InstructionTokenizer.train(INSTRUCTIONS).vocab
    args = dict(state_dim=6, action_dim=3, vocab=vocab, chunk_size=4, hidden=32, num_flow_steps=5)
    return FlowChunkPolicy(**(args | kwargs))


def make_obs(b=8, images=False, seed=0):
    rng = np.random.default_rng(seed)
    obs = {
        "state": rng.normal(size=(b, 6)).astype(np.float32),
        "instruction": [INSTRUCTIONS[i % 2] for i in range(b)],
        "task": ["t"] * b,
    }
    if images:
        obs["image"] = rng.integers(0, 255, size=(b, 1, 32, 32, 3), dtype=np.uint8)
    return obs


def test_gaussian_log_prob_by_hand():
    # log N(1; 0, 2^2) = -0.5 * (0.25 + log 2 pi) - log 2
    value = gaussian_log_prob(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(2.0))
    assert value.item() == pytest.approx(-0.5 * (0.25 + np.log(2 * np.pi)) - np.log(2.0))


def test_log_prob_rescoring_equals_sampling_log_prob():
    policy = make_policy().eval()
    obs = make_obs()
    with torch.no_grad():
        sample = policy.sample_actions(obs)
        again = policy.log_prob(obs, sample)
    assert sample.actions.shape == (8, 4, 3)
    assert sample.extras["chain"].shape == (8, 6, 12)
    torch.testing.assert_close(again, sample.log_prob, atol=1e-4, rtol=1e-5)


def test_log_prob_changes_with_the_weights_and_gets_gradients():
    policy = make_policy()
    obs = make_obs()
    with torch.no_grad():
        sample = policy.sample_actions(obs)
    before = {k: v.clone() for k, v in policy.named_parameters()}
    optim = torch.optim.Adam(policy.parameters(), lr=1e-2)
    loss = -policy.log_prob(obs, sample).mean()
    loss.backward()
    optim.step()
    changed = [k for k, v in policy.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("velocity") for k in changed) and any(
        k.startswith("noise") for k in changed
    )
    with torch.no_grad():
        assert (policy.log_prob(obs, sample) > sample.log_prob).float().mean() > 0.5


def test_bc_loss_falls_on_a_fixed_batch():
    policy = make_policy()
    obs = make_obs(32)
    rng = np.random.default_rng(1)
    actions = torch.as_tensor(rng.uniform(-1, 1, size=(32, 4, 3)), dtype=torch.float32)
    policy.normalizer.fit(obs["state"], actions.flatten(0, 1).numpy())

    def loss():
        torch.manual_seed(123)  # the same x0 and t draws before and after training
        with torch.no_grad():
            return policy.bc_loss(obs, actions).item()

    start = loss()
    optim = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(150):
        optim.zero_grad()
        policy.bc_loss(obs, actions).backward()
        optim.step()
    assert loss() < 0.5 * start


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    policy = make_policy()
    rng = np.random.default_rng(2)
    policy.normalizer.fit(rng.normal(3, 2, (50, 6)), rng.uniform(-2, 5, (50, 3)))
    policy.save_pretrained(tmp_path / "flow")
    loaded = load_policy(str(tmp_path / "flow"))
    assert isinstance(loaded, FlowChunkPolicy)
    for deterministic in (True, False):
        torch.manual_seed(7)
        a = policy.sample_actions(make_obs(), deterministic=deterministic)
        torch.manual_seed(7)
        b = loaded.sample_actions(make_obs(), deterministic=deterministic)
        torch.testing.assert_close(a.actions, b.actions, atol=0, rtol=0)
    # actions come out in env units, inside the demonstrated action range
    low, high = policy.normalizer.action_low, policy.normalizer.action_high
    assert (a.actions >= low - 1e-6).all() and (a.actions <= high + 1e-6).all()


def test_images_reach_the_policy():
    policy = make_policy(num_cameras=1).eval()
    obs = make_obs(4, images=True)
    with torch.no_grad():
        a = policy.sample_actions(obs, deterministic=True).actions
        obs["image"] = 255 - obs["image"]
        b = policy.sample_actions(obs, deterministic=True).actions
    assert a.shape == (4, 4, 3) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="camera images"):
        policy.sample_actions(make_obs(2))


def test_tokenizer_round_trip_and_unknown_words():
    tok = InstructionTokenizer.train(INSTRUCTIONS)
    ids = tok.encode(["Push the puck to the goal!", "reach the shelf"])
    assert tok.decode(ids) == ["push the puck to the goal", "reach the <unk>"]
    assert ids.shape == (2, 6) and ids[1, 3:].tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        InstructionTokenizer(["a", "b"])


def test_unused_sample_fields_are_not_needed_for_log_prob():
    policy = make_policy().eval()
    obs = make_obs(3)
    with torch.no_grad():
        sample = policy.sample_actions(obs)
        bare = ActionSample(actions=sample.actions, extras={"chain": sample.extras["chain"]})
        torch.testing.assert_close(policy.log_prob(obs, bare), sample.log_prob, atol=1e-4, rtol=0)


def test_runs_in_the_rollout_engine_and_the_eval_protocol():
    from toy_benchmark import ToyBenchmark

    from vla_rl.core.benchmark import EnvConfig
    from vla_rl.evaluation.protocol import evaluate

    bench = ToyBenchmark(horizon=12)
    vocab = InstructionTokenizer.train([t.instruction for t in bench.tasks("eval")]).vocab
    policy = FlowChunkPolicy(state_dim=2, action_dim=1, vocab=vocab, chunk_size=4, hidden=16)
    results = evaluate(policy, bench, episodes_per_task=3, progress=False, deterministic=False,
                       env_cfg=EnvConfig(num_envs=2, num_workers=0))  # fmt: skip
    assert results["num_episodes"] == 6
    # Ta = 4 actions per decision: an episode that never succeeds takes 12 / 4 = 3 decisions
    assert all(e["env_steps"] <= 12 for e in results["episodes"])
