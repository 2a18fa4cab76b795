"""SRPO's progress reward on hand-built batches, DBSCAN by hand, and the trajectory encoders."""

import numpy as np
import pytest
import torch

from vla_rl.rewards.encoders import frames_to_pixels, pool, uniform_indices
from vla_rl.rewards.srpo_progress import (
    ProgressRewardConfig,
    dbscan,
    failure_order_agreement,
    last_step_env_reward,
    normalize_distances,
    progress_rewards,
    success_centres,
)


def test_dbscan_by_hand():
    x = np.array([[0, 0], [0, 0.3], [5, 5], [5, 5.2], [10, 10], [0.3, 0.3]], dtype=float)
    assert dbscan(x, eps=0.5, min_samples=2).tolist() == [0, 0, 1, 1, -1, 0]
    assert dbscan(x, eps=0.1, min_samples=2).tolist() == [-1] * 6


def test_success_centres_fall_back_to_the_mean():
    two = np.array([[0.0, 0.0], [0.0, 0.1], [9.0, 9.0], [9.0, 9.1]])
    centres = success_centres(two, eps=0.5, min_samples=2)
    assert np.allclose(sorted(centres[:, 0]), [0.0, 9.0])
    spread = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])  # all noise -> one mean centre
    assert np.allclose(success_centres(spread, eps=0.1, min_samples=2), spread.mean(0))


def test_progress_reward_on_a_hand_built_batch():
    """Task a: 3 successes clustered at the origin, failures at distance 1, 2 and 4, and one
    failed frame capture (zero embedding). Task b: failures only -> 0."""
    emb = np.array([[0, 0.01], [0.01, 0], [0, -0.01],  # successes (a)
                    [1, 0], [0, 2], [-4, 0],  # failures (a)
                    [0, 0],  # failure (a) whose embedding extraction failed
                    [3, 3], [1, 1]], dtype=float)  # fmt: skip  # failures (b)
    success = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    tasks = ["a"] * 7 + ["b"] * 2
    rewards, stats = progress_rewards(emb, success, tasks, ProgressRewardConfig())
    assert np.all(rewards[:3] == 1.0)
    fail = rewards[3:6]
    assert fail[0] > fail[1] > fail[2] and np.all(fail < 0.6) and np.all(fail > 0)
    # min-max over distances 1, 2, 4 (centre at the origin): n = 0, 1/3, 1.
    expected = 0.6 / (1 + np.exp(-10 * (0.5 - np.array([0, 1 / 3, 1]))))
    assert np.allclose(fail, expected, atol=1e-3)
    assert rewards[6] == 0 and stats["zero_embeddings"] == 1
    assert np.all(rewards[7:] == 0) and stats["tasks_without_success"] == 1
    # Steepness and cap are settings.
    soft, _ = progress_rewards(emb, success, tasks, ProgressRewardConfig(cap=0.3, steepness=1))
    assert soft[3:6].max() < 0.3 and soft[3] - soft[5] < fail[0] - fail[2]


def test_a_task_without_success_is_scored_against_its_demonstrations():
    cfg = ProgressRewardConfig()  # cap 0.6, steepness 10, minmax
    emb = np.array([[5.0], [1.0], [3.0], [9.0]])
    success = np.array([True, False, False, False])
    tasks = ["a", "b", "b", "c"]  # a: one success; b and c: none
    plain, stats = progress_rewards(emb, success, tasks, cfg)
    np.testing.assert_allclose(plain, [1, 0, 0, 0])  # SRPO's released rule: no signal
    assert stats["tasks_without_success"] == 2 and stats["tasks_scored_by_demos"] == 0
    demos = {"b": np.array([[0.0], [0.0]])}  # b's demonstrations sit at 0; c has none
    scored, stats = progress_rewards(emb, success, tasks, cfg, demos)
    # b's failures at distance 1 and 3 from the demo centre: n = 0 and 1 (minmax)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(scored, [1, 0.6 * sig(5), 0.6 * sig(-5), 0], rtol=1e-9)
    assert stats["tasks_without_success"] == 2 and stats["tasks_scored_by_demos"] == 1


def test_failure_order_agreement_by_hand():
    # task a: 1 success, failures rewarded 0.1 < 0.3 < 0.5; env scores 2, 1, 3 -> ranks of
    # (0.1, 0.3, 0.5) = (0, 1, 2), of (2, 1, 3) = (1, 0, 2): rho = 1 - 6 * 2 / (3 * 8) = 0.5.
    # task b: no success, 4 failures in the same order as their env scores: rho = 1.
    # task c: 2 failures only (left out); task d: constant env scores (left out).
    rewards = np.array([1, 0.1, 0.3, 0.5, 0.2, 0.4, 0.1, 0.5, 0.3, 0.5, 0.1, 0.2, 0.3])
    env = np.array([9, 2, 1, 3, 2, 4, 1, 5, 7, 8, 1, 1, 1.0])
    success = np.zeros(13, bool)
    success[0] = True
    tasks = ["a"] * 4 + ["b"] * 4 + ["c"] * 2 + ["d"] * 3
    out = failure_order_agreement(rewards, env, success, tasks)
    assert out == pytest.approx({"failure_env_spearman_batch": 0.5,
                                 "failure_env_spearman_batch_tasks": 1.0,
                                 "failure_env_spearman_demos": 1.0,
                                 "failure_env_spearman_demos_tasks": 1.0})  # fmt: skip
    # no task qualifies: the means are left out, the counts say 0
    none = failure_order_agreement(rewards[8:10], env[8:10], success[8:10], tasks[8:10])
    assert none == {"failure_env_spearman_batch_tasks": 0.0,
                    "failure_env_spearman_demos_tasks": 0.0}  # fmt: skip


def test_last_step_env_reward_is_per_env_step_of_the_last_chunk():
    from types import SimpleNamespace

    valid = torch.tensor([[True, True], [True, False], [False, False]])
    rewards = torch.tensor([[1.0, 6.0], [8.0, 6.0], [8.0, 6.0]])  # padding copies the last step
    chunk_steps = torch.tensor([[4, 3], [2, 0], [0, 0]])
    traj = SimpleNamespace(valid=valid, rewards=rewards, chunk_steps=chunk_steps)
    np.testing.assert_allclose(last_step_env_reward(traj), [4.0, 2.0])
    traj.chunk_steps = None
    np.testing.assert_allclose(last_step_env_reward(traj), [8.0, 6.0])


def test_normalizations():
    d = np.array([1.0, 2.0, 100.0])
    assert np.allclose(normalize_distances(d, "minmax"), [0, 1 / 99, 1])
    assert np.allclose(normalize_distances(d, "rank"), [0, 0.5, 1])
    assert np.allclose(normalize_distances(np.array([3.0, 3.0]), "minmax"), [0.5, 0.5])
    with pytest.raises(ValueError, match="valid choices"):
        normalize_distances(d, "zscore")


def test_uniform_frame_indices_and_pooling():
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_indices(3, 5).tolist() == [0, 1, 2, 0, 1]  # shorter: tiled cyclically
    feats = torch.arange(12.0).view(1, 3, 4)
    assert pool(feats, "mean").tolist() == [[4.0, 5.0, 6.0, 7.0]]
    assert pool(feats, "concat").shape == (1, 12)
    frames = np.full((2, 16, 16, 3), 255, np.uint8)
    pixels = frames_to_pixels(frames, 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert pixels.shape == (2, 3, 8, 8) and torch.allclose(pixels, torch.ones(1))


def test_efficientnet_encoder_has_real_weights_and_embeds_videos():
    from vla_rl.rewards.encoders import EfficientNetEncoder

    enc = EfficientNetEncoder(frames=3, image_size=64)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8) for n in (2, 7)]
    emb = enc(None, videos)
    assert emb.shape == (2, 1280) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])
    # The real ImageNet weights, not a random init: the stem conv of the published file.
    assert enc.model._conv_stem.weight.abs().mean() > 0.05
    # Its in-place ReLU6 (for speed) gives the features of the published model's own ReLU6.
    acts = [m for m in enc.model.modules() if isinstance(m, torch.nn.ReLU6)]
    assert acts and all(m.inplace for m in acts)
    for m in acts:
        m.inplace = False
    np.testing.assert_array_equal(enc(None, videos), emb)


def test_vjepa2_encoder_loads_a_local_checkpoint(tmp_path):
    """A tiny random V-JEPA 2 saved in transformers' format, loaded by path as a real one is."""
    from transformers import VJEPA2Config, VJEPA2Model

    from vla_rl.rewards.encoders import VJEPA2Encoder

    cfg = VJEPA2Config(crop_size=32, frames_per_clip=4, tubelet_size=2, patch_size=16,
                       hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       mlp_ratio=2.0, pred_hidden_size=16, pred_num_hidden_layers=1,
                       pred_num_attention_heads=2, pred_num_mask_tokens=2)  # fmt: skip
    VJEPA2Model(cfg).save_pretrained(tmp_path / "vjepa2")
    enc = VJEPA2Encoder(str(tmp_path / "vjepa2"))
    assert enc.frames == 4 and enc.image_size == 32
    videos = [np.random.default_rng(i).integers(0, 255, (5, 40, 40, 3), dtype=np.uint8)
              for i in range(2)]  # fmt: skip
    emb = enc(None, videos)
    assert emb.shape == (2, 32) and not np.allclose(emb[0], emb[1])
    with pytest.raises(OSError, match="local directory"):
        VJEPA2Encoder(str(tmp_path / "missing"))


def test_spearman_by_hand():
    from vla_rl.rewards.rank_correlation import spearman

    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([9, 4, 1])) == pytest.approx(-1.0)
    # ranks x: 0, 1, 2, 3; y with a tie: 0, 1.5, 1.5, 3 -> r = 4.5 / sqrt(5 * 4.5)
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 5, 5, 9])) == pytest.approx(
        4.5 / np.sqrt(5 * 4.5)
    )


def test_demonstration_references_are_embedded_once_per_task():
    """`prepare` rolls out the scripted expert on each task's first train state, renders it like
    the training rollouts and keeps one embedding per successful demonstration."""
    from vla_rl.core.benchmark import EnvConfig, get_benchmark
    from vla_rl.core.reward import RewardContext
    from vla_rl.rewards.srpo_progress import SRPOProgressReward

    bench = get_benchmark("metaworld")
    tasks = bench.tasks("train", ["reach-v3", "drawer-close-v3"])
    cfg = ProgressRewardConfig(frames=2, frame_size=32)
    reward = SRPOProgressReward(cfg, policy=None)
    reward.prepare(RewardContext(bench, tasks, EnvConfig(num_envs=2, num_workers=0)))
    assert set(reward.references) == {"reach-v3", "drawer-close-v3"}
    shapes = {t: e.shape for t, e in reward.references.items()}
    assert all(s[0] == 1 and s[1] > 0 for s in shapes.values()), shapes  # the expert succeeds
    assert not np.allclose(*reward.references.values())  # two tasks, two different videos
    off = SRPOProgressReward(ProgressRewardConfig(frames=2, frame_size=32, references="none"), None)
    off.prepare(RewardContext(bench, tasks, EnvConfig(num_envs=2, num_workers=0)))
    assert off.references == {}
