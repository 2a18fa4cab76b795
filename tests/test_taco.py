"""TACO: the CFN's pseudo-counts order inputs by frequency, candidates share one observation
encoding and carry the policy's internal feature, reranking with K = 1 is the base policy,
selection and the noise bank behave as documented, the verifier round-trips, and
`fit-verifier` + `eval --rerank` run end to end on a tiny policy and dataset."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_rl.cli import main
from vla_rl.core.policy import naive_candidates
from vla_rl.core.types import index_obs
from vla_rl.data.lerobot_dataset import Episode, write_dataset
from vla_rl.methods.taco.cfn import CFNConfig, CoinFlipNetwork, coin_flips, train_cfn
from vla_rl.methods.taco.rerank import RerankPolicy, draw_candidates, select_best
from vla_rl.policies.diffusion_chunk import DiffusionChunkPolicy
from vla_rl.policies.flow_chunk import FlowChunkPolicy
from vla_rl.policies.obs_encoder import InstructionTokenizer
from vla_rl.policies.token_vla import TokenVLAPolicy

INSTRUCTIONS = ["reach the goal", "push the puck to the goal"]
VOCAB = InstructionTokenizer.train(INSTRUCTIONS).vocab
TINY_CFN = CFNConfig(width=64, blocks=1, expansion=2, epochs=60, batch_size=64, grad_accum=1,
                     min_updates=0, lr=3e-3, feature_scale=1.0)  # fmt: skip


def make_obs(b=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(b, 5)).astype(np.float32),
            "instruction": [INSTRUCTIONS[i % 2] for i in range(b)], "task": ["t"] * b}  # fmt: skip


def make(family: str, **kwargs):
    torch.manual_seed(0)
    if family == "flow":
        return FlowChunkPolicy(5, 2, VOCAB, chunk_size=3, hidden=32, num_flow_steps=3, **kwargs)
    if family == "diffusion":
        return DiffusionChunkPolicy(5, 2, VOCAB, chunk_size=3, hidden=32, inference_steps=3)
    return TokenVLAPolicy(5, 2, VOCAB, chunk_size=3, hidden=32, max_words=6, **kwargs)


FAMILIES = ["flow", "diffusion", "tokenvla"]


# ---- the CFN ------------------------------------------------------------------------------------
def test_coin_flips_are_fixed_rademacher_vectors():
    c = coin_flips(500, 20, seed=3)
    assert c.shape == (500, 20) and set(c.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(c, coin_flips(500, 20, seed=3))
    assert not torch.equal(c, coin_flips(500, 20, seed=4))
    assert abs(float(c.mean())) < 0.05  # fair coins


def test_cfn_counts_frequent_inputs_above_rare_above_unseen():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 2

    def cluster(c: int, n: int) -> torch.Tensor:
        return centres[c] + 0.05 * torch.randn(n, 8, generator=g)

    cfn, losses = train_cfn(torch.cat([cluster(0, 400), cluster(1, 20)]), TINY_CFN)
    assert losses[-1] < 0.7 * losses[0]
    frequent, rare, unseen = (float(cfn.pseudo_count(cluster(c, 50)).median()) for c in range(3))
    assert frequent > 3 * rare and rare > 3 * unseen, (frequent, rare, unseen)


def test_cfn_random_prior_is_frozen_and_standardised():
    feats = torch.randn(300, 6)
    cfn, _ = train_cfn(feats, TINY_CFN)
    before = {k: v.clone() for k, v in cfn.prior.state_dict().items()}
    prior_out = (cfn.prior(feats) - cfn.prior_mean) / cfn.prior_std
    assert torch.allclose(prior_out.mean(0), torch.zeros(20), atol=1e-4)
    assert torch.allclose(prior_out.std(0), torch.ones(20), atol=1e-3)
    train_cfn(feats, TINY_CFN)  # a second fit builds its own networks
    assert all(torch.equal(before[k], v) for k, v in cfn.prior.state_dict().items())
    assert not any(p.requires_grad for p in cfn.prior.parameters())


def test_verifier_save_load_round_trip(tmp_path):
    feats = torch.randn(100, 6)
    cfn, _ = train_cfn(feats, TINY_CFN)
    cfn.save(tmp_path / "v", {"policy": "x"})
    loaded = CoinFlipNetwork.load(tmp_path / "v")
    assert torch.equal(cfn.pseudo_count(feats), loaded.pseudo_count(feats))
    assert json.loads((tmp_path / "v" / "verifier.json").read_text())["policy"] == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
    with pytest.raises(ValueError, match="6-D"):
        loaded.pseudo_count(torch.randn(2, 7))
    with pytest.raises(FileNotFoundError, match="fit-verifier"):
        CoinFlipNetwork.load(tmp_path)


# ---- candidates ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_candidates_carry_features_and_rescore_exactly(family):
    """B * K rows, observation-major, each with its own internal feature; the shared-prefix
    sampling gives the log-likelihood the policy assigns when it re-encodes every row."""
    policy, obs, k = make(family), make_obs(3), 5
    torch.manual_seed(1)
    cands = policy.sample_candidates(obs, k, deterministic=False)
    assert cands.actions.shape == (3 * k, 3, 2)
    feature = cands.extras["feature"]
    assert feature.shape == (3 * k, 32)
    assert not torch.allclose(feature[0], feature[1])  # candidates of one observation differ
    repeated = index_obs(obs, np.repeat(np.arange(3), k))
    with torch.no_grad():
        rescored = policy.log_prob(repeated, cands)
    torch.testing.assert_close(rescored, cands.log_prob.detach(), rtol=1e-4, atol=1e-3)


def count_calls(module: torch.nn.Module) -> list[int]:
    """Batch sizes of every forward call of `module`."""
    calls: list[int] = []
    module.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prefix_is_computed_once_per_observation(family):
    policy = make(family)
    encoder = policy.state_proj if family == "tokenvla" else policy.encoder
    calls = count_calls(encoder)
    RerankPolicy(policy, None, 8, selection="random").sample_actions(make_obs(3))
    assert calls == [3]  # one encoder call on the 3 observations, not on 3 * 8 rows
    calls.clear()
    naive_candidates(policy, make_obs(3), 8)
    assert calls == [24]  # naive batching re-encodes every candidate's copy


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("deterministic", [True, False])
def test_rerank_with_one_candidate_is_the_base_policy(family, deterministic):
    policy, obs = make(family), make_obs(4)
    cfn = CoinFlipNetwork(32, TINY_CFN)
    torch.manual_seed(7)
    base = policy.sample_actions(obs, deterministic)
    torch.manual_seed(7)
    reranked = RerankPolicy(policy, cfn.pseudo_count, 1).sample_actions(obs, deterministic)
    assert torch.equal(base.actions, reranked.actions)
    assert torch.equal(base.log_prob, reranked.log_prob)


def test_pseudo_count_selection_executes_the_best_scored_candidate():
    """A scorer that prefers large first action values: the executed chunk is the argmax."""
    policy, obs, k = make("flow"), make_obs(3), 6
    feature_to_score = {}

    def scorer(features):
        scores = torch.randn(len(features))
        feature_to_score["scores"] = scores
        return scores

    torch.manual_seed(3)
    cands = policy.sample_candidates(obs, k)
    torch.manual_seed(3)
    chosen = RerankPolicy(policy, scorer, k).sample_actions(obs)
    best = feature_to_score["scores"].view(3, k).argmax(1)
    assert torch.equal(chosen.actions, cands.actions.view(3, k, 3, 2)[torch.arange(3), best])
    best_scores = feature_to_score["scores"].view(3, k).max(1).values
    assert torch.equal(chosen.extras["pseudo_count"], best_scores)
    assert torch.equal(select_best(torch.tensor([1.0, 3, 3, 0, 5, 2]), 3), torch.tensor([1, 1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_noise_bank_repeats_and_is_shared_fresh_noise_is_not(family):
    policy = make(family)
    obs = make_obs(2)
    obs = index_obs(obs, [0, 0])  # two copies of one observation
    first = draw_candidates(policy, obs, 4, False, fixed_noise=True)
    again = draw_candidates(policy, obs, 4, False, fixed_noise=True)
    assert torch.equal(first.actions, again.actions)  # same bank every call
    assert torch.equal(first.actions[:4], first.actions[4:])  # shared by both observations
    fresh = draw_candidates(policy, obs, 4, False, fixed_noise=False)
    assert not torch.equal(fresh.actions[:4], fresh.actions[4:])


def test_token_candidates_are_sampled_even_when_eval_is_deterministic():
    policy, obs = make("tokenvla"), make_obs(2)
    cands = draw_candidates(policy, obs, 8, deterministic=True, fixed_noise=False)
    tokens = cands.extras["action_tokens"].view(2, 8, -1)
    assert len({tuple(t.tolist()) for t in tokens[0]}) > 1  # not 8 copies of the argmax
    flow = draw_candidates(make("flow"), obs, 8, deterministic=True, fixed_noise=False)
    assert "chain" in flow.extras  # chain families keep the noise-free ODE from K noises


# ---- command line end to end --------------------------------------------------------------------
def test_fit_verifier_and_eval_rerank_end_to_end(tmp_path, capsys):
    """A tiny flow policy for Meta-World's reach task, two fake demonstrations, the verifier
    fitted next to the policy, then one TACO-reranked eval episode that records its settings."""
    from vla_rl.core.benchmark import get_benchmark

    bench = get_benchmark("metaworld")
    spec = bench.tasks("eval", ["reach-v3"])[0]
    torch.manual_seed(0)
    vocab = InstructionTokenizer.train([spec.instruction]).vocab
    policy = FlowChunkPolicy(39, 4, vocab, chunk_size=4, hidden=16, num_flow_steps=2)
    ckpt = tmp_path / "policy"
    policy.save_pretrained(ckpt)
    rng = np.random.default_rng(0)
    episodes = [Episode(task=spec.instruction, state=rng.normal(size=(12, 39)).astype(np.float32),
                        action=rng.uniform(-1, 1, size=(12, 4)).astype(np.float32),
                        reward=np.zeros(12, np.float32), success=True)
                for _ in range(2)]  # fmt: skip
    write_dataset(tmp_path / "ds", episodes, fps=80, robot_type="sawyer")

    args = ["fit-verifier", "--policy", str(ckpt), "--dataset", str(tmp_path / "ds"),
            "--candidates", "4", "--no-progress", "--cfn.width", "32", "--cfn.blocks", "1",
            "--cfn.min-updates", "5", "--cfn.epochs", "2"]  # fmt: skip
    assert main(args) == 0
    fit = json.loads((ckpt / "taco_verifier" / "fit.json").read_text())
    assert fit["samples"] == 24 and fit["feature_dim"] == 16 and fit["cfn_samples"] == 24
    assert (ckpt / "taco_verifier" / "cfn_loss.png").is_file()
    noised = tmp_path / "noised"  # TACO's Eq. 7-8 samples: 3 more features per frame
    assert main([*args, "--noised-draws", "3", "--output-dir", str(noised)]) == 0
    assert json.loads((noised / "fit.json").read_text())["cfn_samples"] == 24 * 4

    out = tmp_path / "eval"
    args = ["eval", "--policy", str(ckpt), "--tasks", "reach-v3", "--episodes", "1", "--rerank",
            "taco", "--candidates", "4", "--output-dir", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_episodes"] == 1
    assert results["config"]["rerank"] == "taco" and results["config"]["candidates"] == 4


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_noised_target_features_are_the_final_step_features_near_the_target(family):
    """At the last sampling step's level the noised demonstrated chunk is mostly the chunk
    itself: its features lie far closer to each other (draws of one target) than to the
    features of another target."""
    policy = make(family)
    obs = make_obs(2)
    actions = torch.stack([torch.full((3, 2), 0.5), torch.full((3, 2), -0.5)])
    feats = policy.noised_target_features(obs, actions, 4, torch.Generator().manual_seed(0))
    assert feats.shape == (2, 4, 32)
    again = policy.noised_target_features(obs, actions, 4, torch.Generator().manual_seed(0))
    assert torch.equal(feats, again)  # seeded: the same samples
    same_obs = {k: v[[0, 0]] if not isinstance(v, list) else [v[0]] * 2 for k, v in obs.items()}
    pair = policy.noised_target_features(same_obs, actions, 4, torch.Generator().manual_seed(0))
    within = (pair[0] - pair[0].mean(0)).norm(dim=-1).mean()
    between = (pair[0].mean(0) - pair[1].mean(0)).norm()
    assert within < between


def test_rerank_bad_input_names_the_choices(tmp_path, capsys):
    args = ["eval", "--policy", "zero", "--rerank", "best", "--output-dir", str(tmp_path / "a")]
    assert main(args) == 2
    assert "valid choices: none, taco, random" in capsys.readouterr().err
    args = ["eval", "--policy", "metaworld-flow", "--rerank", "taco", "--verifier",
            str(tmp_path / "missing"), "--output-dir", str(tmp_path / "b")]  # fmt: skip
    assert main(args) == 2
    assert "fit-verifier" in capsys.readouterr().err
    args = ["fit-verifier", "--policy", "metaworld-flow", "--dataset", str(tmp_path / "no")]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
    args = ["fit-verifier", "--policy", "metaworld-flow", "--dataset", str(tmp_path),
            "--cfn.batch-size", "0", "--output-dir", str(tmp_path / "c")]  # fmt: skip
    assert main(args) == 2
    assert "--cfn.batch-size must be >= 1, got 0" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


def test_success_bars_plot(tmp_path):
    from vla_rl.runs.plots import plot_success_bars

    run = {"success_rate": 0.4, "success_ci95": [0.3, 0.5]}
    plot_success_bars({"flow": {"none": run, "taco K=4": run}}, tmp_path / "bars.png", "t")
    assert (tmp_path / "bars.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["metaworld-flow", "metaworld-tokenvla"])
def test_bundled_bases_ship_a_verifier_and_a_users_own_fit_wins(tmp_path, monkeypatch, name):
    from vla_rl.methods.taco.cfn import CoinFlipNetwork
    from vla_rl.methods.taco.rerank import default_verifier_dir, find_verifier

    monkeypatch.chdir(tmp_path)  # no runs/verifiers here: the shipped one
    shipped = find_verifier(name)
    assert shipped.parts[-3:] == ("checkpoints", name, "taco_verifier")
    cfn = CoinFlipNetwork.load(shipped)
    assert cfn.feature_dim > 0
    own = default_verifier_dir(name)
    assert own == Path("runs/verifiers") / name  # where fit-verifier writes, not the package
    cfn.save(own)
    assert find_verifier(name) == own
