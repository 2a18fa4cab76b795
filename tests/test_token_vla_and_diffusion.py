"""The token-VLA and diffusion families: action tokenizer round trip, exact re-scoring of sampled
actions, BC loss falling on a fixed batch, save/load round trips, and the DDIM chain matching
diffusers' own DDIM step."""

import numpy as np
import pytest
import torch

from vla_rl.core.policy import load_policy
from vla_rl.policies.diffusion_chunk import DiffusionChunkPolicy
from vla_rl.policies.obs_encoder import InstructionTokenizer
from vla_rl.policies.token_vla import NUM_BINS, ActionTokenizer, TokenVLAPolicy

INSTRUCTIONS = ["reach the goal", "push the puck to the goal"]
VOCAB = InstructionTokenizer.train(INSTRUCTIONS).vocab


def make_obs(b=6, images=False, seed=0):
    rng = np.random.default_rng(seed)
    obs = {"state": rng.normal(size=(b, 5)).astype(np.float32),
           "instruction": [INSTRUCTIONS[i % 2] for i in range(b)], "task": ["t"] * b}  # fmt: skip
    if images:
        obs["image"] = rng.integers(0, 255, size=(b, 1, 32, 32, 3), dtype=np.uint8)
    return obs


def make(family, **kwargs):
    torch.manual_seed(0)
    if family == "diffusion":
        args = dict(chunk_size=3, hidden=32, inference_steps=4)
        return DiffusionChunkPolicy(5, 2, VOCAB, **(args | kwargs))
    args = dict(chunk_size=3, hidden=32, max_words=6)
    return TokenVLAPolicy(5, 2, VOCAB, **(args | kwargs))


FAMILIES = [
    ("tokenvla", {"decoding": "autoregressive"}),
    ("tokenvla", {"decoding": "parallel"}),
    ("tokenvla", {"num_cameras": 1}),
    ("diffusion", {}),
    ("diffusion", {"num_cameras": 1}),
]
IDS = ["tokenvla-ar", "tokenvla-parallel", "tokenvla-images", "diffusion", "diffusion-images"]


def test_action_tokenizer_round_trip_within_half_a_bin():
    tok = ActionTokenizer()
    x = torch.linspace(-1, 1, 10_001)
    bins = tok.encode(x)
    assert bins.min() == 0 and bins.max() == NUM_BINS - 1
    assert (tok.decode(bins) - x).abs().max() <= 1 / NUM_BINS + 1e-6  # half of width 2/256
    assert tok.encode(torch.tensor([-5.0, 5.0])).tolist() == [0, NUM_BINS - 1]  # clipped


def test_token_vla_round_trip_in_env_units():
    """Through the policy's normaliser: env units -> tokens -> env units within half a bin."""
    policy = make("tokenvla")
    actions = torch.rand(200, 2) * torch.tensor([4.0, 0.5]) - torch.tensor([2.0, 0.1])
    policy.normalizer.fit(np.zeros((2, 5)), actions.numpy())
    bins = policy.action_tokenizer.encode(policy.normalizer.action_to_unit(actions))
    back = policy.normalizer.action_from_unit(policy.action_tokenizer.decode(bins))
    half_bin = (policy.normalizer.action_high - policy.normalizer.action_low) / NUM_BINS
    assert ((back - actions).abs() <= half_bin + 1e-5).all()


def test_action_tokens_are_the_reserved_last_256_ids():
    policy = make("tokenvla")
    assert policy.lm.config.vocab_size == len(VOCAB) + NUM_BINS
    sample = policy.sample_actions(make_obs())
    assert sample.extras["action_tokens"].shape == (6, 3 * 2)
    assert sample.actions.shape == (6, 3, 2)


@pytest.mark.parametrize(("family", "kwargs"), FAMILIES, ids=IDS)
def test_log_prob_rescores_the_sampled_actions(family, kwargs):
    policy = make(family, **kwargs)
    policy.eval()
    obs = make_obs(images=kwargs.get("num_cameras", 0) > 0)
    with torch.no_grad():
        sample = policy.sample_actions(obs)
        rescored = policy.log_prob(obs, sample)
    assert torch.isfinite(sample.log_prob).all()
    torch.testing.assert_close(rescored, sample.log_prob, atol=1e-4, rtol=1e-5)
    # a different sample scores differently, and log_prob is differentiable
    other = policy.sample_actions(make_obs(seed=1, images="image" in obs))
    assert not torch.allclose(policy.log_prob(obs, other), rescored)
    policy.log_prob(obs, sample).sum().backward()


@pytest.mark.parametrize(("family", "kwargs"), FAMILIES, ids=IDS)
def test_bc_loss_falls_on_a_fixed_batch(family, kwargs):
    policy = make(family, **kwargs)
    obs = make_obs(images=kwargs.get("num_cameras", 0) > 0)
    actions = torch.rand(6, 3, 2) * 2 - 1
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)

    def loss():
        torch.manual_seed(0)  # the diffusion loss draws noise and timesteps: fix them
        return policy.bc_loss(obs, actions)

    before = loss().item()
    for _ in range(60):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
    assert loss().item() < 0.5 * before


@pytest.mark.parametrize(("family", "kwargs"), FAMILIES, ids=IDS)
def test_save_load_round_trip_gives_identical_actions(tmp_path, family, kwargs):
    policy = make(family, **kwargs)
    policy.normalizer.fit(np.random.default_rng(0).normal(size=(50, 5)),
                          np.random.default_rng(1).uniform(-2, 2, size=(50, 2)))  # fmt: skip
    policy.save_pretrained(tmp_path / "p")
    loaded = load_policy(str(tmp_path / "p"))
    assert type(loaded) is type(policy)
    obs = make_obs(images=kwargs.get("num_cameras", 0) > 0)
    for deterministic in (True, False):
        torch.manual_seed(5)
        a = policy.sample_actions(obs, deterministic).actions
        torch.manual_seed(5)
        b = loaded.sample_actions(obs, deterministic).actions
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_token_vla_deterministic_is_the_argmax():
    policy = make("tokenvla", decoding="parallel")
    obs = make_obs()
    with torch.no_grad():
        sample = policy.sample_actions(obs, deterministic=True)
        logits = policy.action_logits(obs, None)
    assert torch.equal(sample.extras["action_tokens"], logits.argmax(-1))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_transition_matches_diffusers_step(eta):
    """Our mean + sigma * z is exactly diffusers' DDIMScheduler.step with the same noise."""
    policy = make("diffusion")
    obs = make_obs()
    x = torch.randn(6, 6)
    with torch.no_grad():
        feature = policy.encode(obs)
        for t, t_prev in policy._steps():
            mean, sigma = policy.transition(x, t, t_prev, feature, eta)
            eps = policy.eps(x, torch.full((6,), t), feature)
            z = torch.randn_like(x)
            ref = policy.ddim.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
            torch.testing.assert_close(mean + sigma * z, ref, atol=1e-5, rtol=1e-5)
            x = ref


def test_diffusion_min_std_keeps_every_step_stochastic():
    policy = make("diffusion", min_std=0.05)
    sample = policy.sample_actions(make_obs())
    steps = sample.extras["chain"]
    assert steps.shape == (6, 4 + 1, 6)
    assert torch.isfinite(sample.log_prob).all()
