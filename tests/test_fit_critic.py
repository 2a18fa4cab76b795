"""`vla-rl fit-critic` and `PairwiseProgressCritic`: the label helpers by hand, a short fit on a
synthetic image dataset (a bright square moving toward its goal) that beats a random critic on
held-out episodes, save/load, exact resume, and the one-line errors."""

import json

import numpy as np
import pytest
import torch

from vla_rl.commands.fit_critic import FitCriticConfig, fit_critic, split_episodes
from vla_rl.data.lerobot_dataset import Episode, write_dataset
from vla_rl.rewards.critic_quality import CriticEpisode, critic_quality
from vla_rl.rewards.pairwise_critic import (
    PairwiseProgressCritic,
    bin_centers,
    hl_gauss_target,
    progress_delta,
    vlac_pair_label,
)
from vla_rl.rewards.progress_critic import ProgressCritic, progress_update

SIZE, T = 32, 10
TASKS = {"move the square right": (0, 1), "move the square down": (1, 0)}


# ---- pure helpers by hand ---------------------------------------------------------------------
def test_vlac_pair_labels_on_a_five_frame_episode():
    # progress t / 4: forward pairs gain a fraction of what remains, backward lose a fraction
    i = np.array([0, 1, 2, 3, 4, 2, 0])
    j = np.array([4, 3, 3, 1, 0, 2, 1])
    expected = [1.0, 2 / 3, 1 / 2, -2 / 3, -1.0, 0.0, 1 / 4]
    np.testing.assert_allclose(vlac_pair_label(i, j, 5), expected)


def test_progress_delta_inverts_progress_update():
    p_a = np.array([0.0, 0.25, 0.5, 0.9, 1.0, 0.5])
    p_b = np.array([0.5, 1.0, 0.25, 0.3, 0.2, 0.5])
    d = progress_delta(p_a, p_b)
    back = progress_update(torch.tensor(p_a), torch.tensor(d))
    np.testing.assert_allclose(back.numpy(), p_b, atol=1e-12)


def test_hl_gauss_target_sums_to_one_and_peaks_at_the_labels_bin():
    bins = 21  # width 2/21: label 0 is bin 10's centre, 1.0 the last bin's edge
    labels = torch.tensor([0.0, 1.0, -0.5, 0.31])
    target = hl_gauss_target(labels, bins, sigma=0.75 * 2 / bins)
    np.testing.assert_allclose(target.sum(1).numpy(), 1.0, atol=1e-6)
    assert target.argmax(1).tolist() == [10, 20, 5, 13]
    # symmetric around a centre label; mean close to the label away from the edges
    np.testing.assert_allclose(target[0].numpy(), target[0].flip(0).numpy(), atol=1e-6)
    assert abs((target[2] @ bin_centers(bins)).item() + 0.5) < 1e-3


# ---- a synthetic dataset ---------------------------------------------------------------------
def square_frames(start: np.ndarray, direction: tuple[int, int], reach: float) -> np.ndarray:
    """T frames (T, SIZE, SIZE, 3) of a 6-pixel bright square moving from `start` along
    `direction` across `reach` of the way to the far edge; a dim goal stripe on that edge."""
    frames = np.zeros((T, SIZE, SIZE, 3), np.uint8)
    end = start + np.array(direction) * (SIZE - 7 - start) * reach
    for t in range(T):
        y, x = np.round(start + (end - start) * t / (T - 1)).astype(int)
        frames[t, y : y + 6, x : x + 6] = 255
    return frames


def make_dataset(root, seed=0, with_images=True):
    rng = np.random.default_rng(seed)
    episodes = []
    for task, direction in TASKS.items():
        for k in range(8):
            start = rng.integers(1, 8, size=2).astype(float)
            success = k < 6  # 6 successes and 2 rollouts that stop halfway
            frames = square_frames(start, direction, 1.0 if success else 0.45)
            images = {"top": frames} if with_images else {}
            episodes.append(Episode(task, np.tile(start, (T, 1)).astype(np.float32),
                                    np.zeros((T, 2), np.float32), np.zeros(T, np.float32),
                                    success, images))  # fmt: skip
    return write_dataset(root, episodes, fps=10)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "squares")


def config(dataset, out, **kw):
    base = dict(datasets=(str(dataset),), image_size=SIZE, steps=300, batch_size=8,
                save_every=100, held_out=0.25, output_dir=str(out), progress=False,
                wrong_instruction=0.1)  # fmt: skip
    return FitCriticConfig(**{**base, **kw})


class RandomCritic(ProgressCritic):
    """The baseline to beat: seeded random deltas and done."""

    def __init__(self):
        super().__init__(cache_size=0)
        self.gen = torch.Generator().manual_seed(0)

    def _delta_batch(self, frames_a, frames_b, instructions):
        return torch.rand(len(frames_a), generator=self.gen) * 2 - 1

    def _done_batch(self, frames, instructions):
        return torch.rand(len(frames), generator=self.gen)


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "run"
    return out, fit_critic(config(dataset, out))


def test_a_short_fit_beats_a_random_critic_on_held_out_episodes(fitted, dataset):
    out, res = fitted
    fit = json.loads((out / "fit.json").read_text())
    assert fit["steps"] == 300 and fit["parameters"] < 3_000_000
    assert fit["episodes"]["held_out"]["successful"] >= 2
    held = set(fit["held_out_episodes"])
    assert len(held) == 4 and len(held) < 16  # 25% of each task's 8 initial states
    voc = fit["quality"]["voc"]["mean"]
    # the random critic on the same held-out episodes
    from vla_rl.data.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(dataset)
    eps = [ds.episode(int(s.rsplit("#", 1)[1])) for s in sorted(held)]
    episodes = [CriticEpisode(e.images["top"], e.task, e.success) for e in eps]
    names = sorted(TASKS)
    random_q = critic_quality(RandomCritic(), episodes, {names[0]: names[1], names[1]: names[0]})
    assert random_q["voc"]["mean"] < 0.5
    assert voc > 0.8 and voc > random_q["voc"]["mean"] + 0.4
    assert fit["losses"][-1]["delta_ce"] < fit["losses"][0]["delta_ce"]


def test_split_keeps_each_initial_state_on_one_side(dataset):
    from vla_rl.commands.fit_critic import load_data

    episodes, _ = load_data(config(dataset, "unused"))
    # a second episode from the same reset as episode 0 (a rollout next to its demo)
    episodes.append(episodes[0].__class__(**{**episodes[0].__dict__, "source": "copy"}))
    train, held = split_episodes(episodes, 0.25, seed=3)
    assert not set(train) & set(held) and len(train) + len(held) == len(episodes)
    side = [k in held for k in (0, len(episodes) - 1)]
    assert side[0] == side[1]


def test_save_load_round_trip_gives_identical_outputs(fitted, tmp_path):
    out, _ = fitted
    critic = PairwiseProgressCritic.load(out / "critic")
    frames = square_frames(np.array([3.0, 3.0]), (0, 1), 1.0)
    a = critic.progress(frames, "move the square right")
    critic.save(tmp_path / "again")
    again = PairwiseProgressCritic.load(tmp_path / "again")
    assert torch.equal(again.progress(frames, "move the square right"), a)
    assert torch.equal(again.done(frames, "move the square right"),
                       critic.done(frames, "move the square right"))  # fmt: skip
    assert critic.knows("move the square right") and not critic.knows("jump")


def test_resume_continues_exactly_from_the_checkpoint(dataset, tmp_path):
    whole = fit_critic(config(dataset, tmp_path / "whole", steps=40, save_every=20))
    fit_critic(config(dataset, tmp_path / "cut", steps=20, save_every=20))
    resumed = fit_critic(config(dataset, tmp_path / "cut", steps=40, save_every=20, resume=True))
    assert resumed["steps"] == 40
    assert resumed["losses"] == whole["losses"]
    a = PairwiseProgressCritic.load(tmp_path / "whole" / "critic").net.state_dict()
    b = PairwiseProgressCritic.load(tmp_path / "cut" / "critic").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_gives_one_line_errors(tmp_path, dataset):
    no_images = make_dataset(tmp_path / "state_only", with_images=False)
    cases = [
        (config(no_images, tmp_path / "o1"), ValueError, "holds no camera images"),
        (config(tmp_path / "missing", tmp_path / "o2"), FileNotFoundError, "no such dataset"),
        (config(dataset, tmp_path / "o3", camera="wrist"), ValueError, "valid choices: top"),
        (FitCriticConfig(output_dir=str(tmp_path / "o4")), ValueError, "--datasets is required"),
    ]
    for cfg, error, message in cases:
        with pytest.raises(error, match=message) as info:
            fit_critic(cfg)
        assert "\n" not in str(info.value)
        assert not (tmp_path / cfg.output_dir).exists()  # nothing written
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "config.json").write_text('{"format": "something else"}')
    (tmp_path / "policy" / "model.safetensors").write_bytes(b"x")
    for directory in (tmp_path / "policy", tmp_path / "empty"):
        with pytest.raises(ValueError, match="expected a pairwise progress critic") as info:
            PairwiseProgressCritic.load(directory)
        assert "\n" not in str(info.value)


# ---- vla-rl critic-quality -------------------------------------------------------------------
def test_critic_quality_scores_the_fits_held_out_episodes(fitted, dataset, tmp_path):
    from vla_rl.commands.critic_quality import CriticQualityConfig, run_quality

    out, _ = fitted
    fit = json.loads((out / "fit.json").read_text())
    cfg = CriticQualityConfig(critic=str(out / "critic"), datasets=(str(dataset),),
                              fit=str(out / "fit.json"), output=str(tmp_path / "q" / "q.json"),
                              timing_pairs=8)  # fmt: skip
    res = run_quality(cfg)
    assert sorted(res["episodes_scored"]) == sorted(fit["held_out_episodes"])
    # the same critic on the same episodes as fit.json's own quality
    assert res["quality"]["voc"]["mean"] == pytest.approx(fit["quality"]["voc"]["mean"])
    assert set(res["milliseconds_per_pair"]) == {"batch_1", "batch_64"}
    assert all(v > 0 for v in res["milliseconds_per_pair"].values())
    assert (tmp_path / "q" / "progress.png").is_file()
    assert json.loads((tmp_path / "q" / "q.json").read_text())["quality"] == res["quality"]


def test_critic_quality_bad_input_exits_2_and_writes_nothing(fitted, tmp_path, capsys):
    from vla_rl.cli import main

    out, _ = fitted
    no_images = make_dataset(tmp_path / "state_only", with_images=False)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text('{"format": "something else"}')
    q = tmp_path / "q" / "q.json"
    cases = [
        (["--critic", str(out / "critic"), "--datasets", str(no_images)], "no camera images"),
        (["--critic", str(wrong), "--datasets", str(no_images)], "not a progress critic"),
        (["--datasets", str(no_images)], "--critic is required"),
        (["--critic", str(out / "critic"), "--datasets", str(no_images), "--mode", "x"],
         "anchored, chained"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(["critic-quality", *args, "--output", str(q)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not q.parent.exists()
