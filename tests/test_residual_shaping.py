"""Dense rewards for the residual method (`--residual.reward critic|dense_oracle`): the shaping
math by hand, finished episodes shaped on the way into the buffer, the critic's view logged,
the demonstrations shaped like the online episodes, and bad settings refused in one line."""

import json

import numpy as np
import pytest
import torch
from test_residual import make_residual
from toy_policies import GreedyToyPolicy

from vla_rl.cli import main as cli_main
from vla_rl.core.config import ConfigError
from vla_rl.core.slots import SlotStep
from vla_rl.methods.residual.shaping import Shaping, check_shaping, episode_bonus
from vla_rl.methods.residual.transitions import SlotEpisodes
from vla_rl.rewards.critic_reward import CriticRewardConfig
from vla_rl.rewards.pairwise_critic import PairwiseProgressCritic


def test_episode_bonus_by_hand():
    phi = np.array([0.0, 0.2, 0.5])
    # terminated: the state after the last step is absorbing, its potential 0
    np.testing.assert_allclose(episode_bonus(phi, True, 0.9), [0.18, -0.2], atol=1e-6)
    # truncated: the critic's potential of the last frame counts (the target bootstraps past it)
    np.testing.assert_allclose(episode_bonus(phi, False, 0.9), [0.18, 0.25], atol=1e-6)
    # gamma 1 telescopes: the sum is Phi(o_L) - Phi(o_0)
    assert episode_bonus(phi, False, 1.0).sum() == pytest.approx(0.5)


class RampCritic:
    """A stand-in critic: progress rises by `rate` per frame (clipped to 1)."""

    image_size = 8

    def __init__(self, rate):
        self.rate = rate

    def progress(self, frames, instruction, mode):
        assert mode == "anchored" and frames.shape[1:] == (8, 8, 3)
        return torch.clamp(torch.arange(len(frames), dtype=torch.float32) * self.rate, max=1.0)


def _step(terminated, reward=0.0, frame=None):
    return SlotStep({}, np.array([reward], np.float32), 1, terminated, False, terminated,
                    None if frame is None else [frame])  # fmt: skip


def _obs(t):
    return {"state": np.full((1, 2), float(t), np.float32), "task": ["left"],
            "instruction": ["go left"], "base_action": np.zeros((1, 1), np.float32)}  # fmt: skip


def test_a_finished_episode_enters_the_buffer_shaped_by_the_critic():
    policy = make_residual(GreedyToyPolicy())
    cfg = CriticRewardConfig(weight=0.5)
    shaping = Shaping("critic", cfg, gamma=0.5, critic=RampCritic(0.25))
    assert shaping.frame_size == 8
    store = SlotEpisodes(policy, 1, n_step=1, gamma=0.5, shaping=shaping)
    frame = np.zeros((8, 8, 3), np.uint8)
    store.start([0], [[frame]])
    unit = torch.zeros(1, 1)
    for t in range(2):
        assert store.record(_obs(t), unit, unit, unit.numpy(), [_step(False, frame=frame)],
                            _obs(t + 1)) == []  # fmt: skip
    (done,) = store.record(_obs(2), unit, unit, unit.numpy(), [_step(True, frame=frame)], _obs(3))
    # Phi = 0, .25, .5, .75; absorbing after success: bonus .5 * (.5*.25 - 0, .5*.5 - .25,
    # 0 - .5) = (.0625, 0, -.25); plus the sparse 1 on the success step; n = 1: ret = reward
    np.testing.assert_allclose(done.transitions["ret"], [0.0625, 0.0, 0.75], atol=1e-6)
    assert shaping.metrics["critic/score_success"] == pytest.approx(0.75)
    assert shaping.metrics["critic/bonus_per_episode"] == pytest.approx(-0.1875)
    assert "critic/auc" not in shaping.metrics  # one class only: nothing to separate


def test_the_critics_view_is_logged_beside_success():
    shaping = Shaping("critic", CriticRewardConfig(alarm_auc=0.6), 0.99, RampCritic(0.1))
    frames = [np.zeros((8, 8, 3), np.uint8)] * 6
    # the failure got further than the success: the critic disagrees with the truth
    shaping.bonus(frames[:3], np.zeros(2), True, True, "x")
    shaping.bonus(frames, np.zeros(5), False, False, "x")
    m = shaping.metrics
    assert m["critic/score_success"] == pytest.approx(0.2)
    assert m["critic/score_failure"] == pytest.approx(0.5)
    assert m["critic/auc"] == 0.0 and m["critic/alarm"] == 1.0
    with pytest.raises(ValueError, match="a frame before every step"):
        shaping.bonus(frames[:2], np.zeros(5), False, False, "x")


def test_the_dense_oracle_shapes_with_the_env_reward():
    policy = make_residual(GreedyToyPolicy())
    cfg = CriticRewardConfig(weight=1.0, oracle_scale=10.0)
    store = SlotEpisodes(policy, 1, n_step=1, gamma=1.0, shaping=Shaping("dense_oracle", cfg, 1.0))
    store.start([0], [None])
    unit = torch.zeros(1, 1)
    store.record(_obs(0), unit, unit, unit.numpy(), [_step(False, 2.0)], _obs(1))
    (done,) = store.record(_obs(1), unit, unit, unit.numpy(), [_step(True, 10.0)], _obs(2))
    # Phi = 0, .2, (absorbing) 0: bonus .2, -.2; plus the success's 1
    np.testing.assert_allclose(done.transitions["ret"], [0.2, 0.8], atol=1e-6)


def test_bad_shaping_settings_are_one_line():
    with pytest.raises(ConfigError, match="success, critic, dense_oracle"):
        check_shaping("dense", None, CriticRewardConfig())
    with pytest.raises(ConfigError, match="--residual.critic"):
        check_shaping("critic", None, CriticRewardConfig())
    with pytest.raises(ConfigError, match="potential"):
        check_shaping("dense_oracle", None, CriticRewardConfig(mode="delta"))
    check_shaping("success", None, CriticRewardConfig())


def _finetune(tmp_path, *flags):
    out = tmp_path / "run"
    code = cli_main(["finetune", "--method", "residual", "--output-dir", str(out), "--logger",
                     "none", "--residual.reward", "critic", *flags])  # fmt: skip
    return code, out


def test_bad_residual_critic_input_exits_2_and_writes_nothing(tmp_path, capsys):
    code, out = _finetune(tmp_path)
    assert code == 2 and not out.exists() and "--residual.critic" in capsys.readouterr().err
    wrong = tmp_path / "not_a_critic"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"format": "something else"}))
    code, out = _finetune(tmp_path, "--residual.critic", str(wrong))
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "not a progress critic" in err
    assert len(err.strip().splitlines()) == 1
    PairwiseProgressCritic(["a task"], image_size=16).save(tmp_path / "critic")
    code, out = _finetune(tmp_path, "--residual.critic", str(tmp_path / "critic"),
                          "--residual.demos", str(tmp_path / "some_dataset"))  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "valid choices here: scripted, none" in err


@pytest.mark.slow
def test_residual_trains_with_a_critic_and_shapes_its_demonstrations(tmp_path):
    from vla_rl.commands.finetune import FinetuneConfig, finetune
    from vla_rl.core.benchmark import EnvConfig, get_benchmark
    from vla_rl.methods.residual.config import ResidualConfig

    task = "drawer-close-v3"
    instruction = get_benchmark("metaworld").tasks("train", [task])[0].instruction
    PairwiseProgressCritic([instruction], image_size=16).save(tmp_path / "critic")
    runs = {}
    for reward in ("success", "critic"):
        run = tmp_path / f"run-{reward}"
        cfg = FinetuneConfig(
            tasks=(task,), env_steps=240, eval_every=240, eval_episodes=1,
            final_eval_episodes=1, videos=0, output_dir=str(run), logger="none", progress=False,
            env=EnvConfig(num_envs=2, num_workers=0, video_size=0, max_steps=120),
        )  # fmt: skip
        cfg.residual = ResidualConfig(learning_starts=80, critic_warmup_updates=5, batch_size=32,
                                      hidden=32, num_critics=2, reward=reward,
                                      critic=str(tmp_path / "critic"))  # fmt: skip
        runs[reward] = finetune(cfg)
        assert runs[reward]["demo_transitions"] > 0
    lines = [
        json.loads(x) for x in (tmp_path / "run-critic" / "metrics.jsonl").read_text().splitlines()
    ]
    episodes = [x for x in lines if "train/episodes" in x]
    assert episodes and all("train/critic/bonus_per_episode" in x for x in episodes)
    assert runs["critic"]["config"]["residual"]["reward"] == "critic"
