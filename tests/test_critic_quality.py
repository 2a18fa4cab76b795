"""Critic quality (issue 18 item 5): ROC-AUC and VOC by hand, then `critic_quality` on a toy
critic whose progress is known (a frame's mean brightness), which must meet every target, and
on a critic of random answers, which must not; and the progress plot."""

import json

import numpy as np
import pytest
import torch

from vla_rl.rewards.critic_quality import (
    CriticEpisode,
    critic_quality,
    plot_progress,
    roc_auc,
    value_order_correlation,
)
from vla_rl.rewards.progress_critic import ProgressCritic

H = W = 4
TASK = "brighten the image"
OTHER = "darken the image"


class BrightnessCritic(ProgressCritic):
    """A frame's progress is its mean brightness p in [0, 1]; delta is VLAC's pair value between
    two such progresses ((pb - pa) / (1 - pa) brighter, (pb - pa) / pa darker); any instruction
    but TASK scores 0; done is the progress."""

    @staticmethod
    def level(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(1, 2, 3)) / 255

    def _delta_batch(self, frames_a, frames_b, instructions):
        pa, pb = self.level(frames_a), self.level(frames_b)
        gained = (pb - pa) / (1 - pa).clamp_min(1e-6)
        lost = (pb - pa) / pa.clamp_min(1e-6)
        d = torch.where(pb >= pa, gained, lost)
        on_task = torch.tensor([s == TASK for s in instructions])
        return torch.where(on_task, d, torch.zeros_like(d))

    def _done_batch(self, frames, instructions):
        return self.level(frames)


class RandomCritic(ProgressCritic):
    """A useless critic: seeded uniform deltas in [-1, 1] and done in [0, 1]. Without a cache:
    the toy episodes share their first and last frames, so a cached critic would answer all
    successes' done (and final progress) with one draw, and all failures' with another."""

    def __init__(self, seed: int = 0):
        super().__init__(cache_size=0)
        self.gen = torch.Generator().manual_seed(seed)

    def _delta_batch(self, frames_a, frames_b, instructions):
        return 2 * torch.rand(len(frames_a), generator=self.gen) - 1

    def _done_batch(self, frames, instructions):
        return torch.rand(len(frames), generator=self.gen)


def episode(top: int, t: int, success: bool) -> CriticEpisode:
    """Uniform frames whose brightness rises evenly from 0 to `top` over t frames."""
    levels = np.linspace(0, top, t).round().astype(np.uint8)
    frames = np.stack([np.full((H, W, 3), v, np.uint8) for v in levels])
    return CriticEpisode(frames, TASK, success)


def episodes(n: int = 4) -> list[CriticEpisode]:
    """n successful episodes (up to full brightness) and n failed ones (up to half), of
    different lengths so that no two are the same questions to the critic."""
    return [episode(255, 6 + i, True) for i in range(n)] + [
        episode(127, 6 + i, False) for i in range(n)
    ]


def test_roc_auc_by_hand():
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [1, 0, 1]) == 0.5
    # 3 positives x 2 negatives: 0.9 beats both, 0.6 beats both, 0.4 loses to 0.5 and ties 0.4.
    assert roc_auc([0.9, 0.4, 0.6, 0.5, 0.4], [1, 1, 1, 0, 0]) == pytest.approx(4.5 / 6)


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.2, 0.7], [1, 1], "both classes, got 2 positive and 0 negative"),
        ([0.2, 0.7], [0, 0], "got 0 positive and 2 negative"),
        ([0.2, 0.7, 0.1], [0, 1], "one shape"),
        ([0.2, 0.7], [0, 2], "bool or 0/1"),
    ],
)
def test_roc_auc_rejects_bad_input(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(scores, labels)


def test_value_order_correlation_by_hand():
    assert value_order_correlation([0.0, 0.1, 0.5, 0.9]) == pytest.approx(1.0)
    assert value_order_correlation(np.array([0.9, 0.4, 0.2, 0.0])) == pytest.approx(-1.0)
    assert value_order_correlation([0.3, 0.3, 0.3]) == 0.0  # no order, not NaN
    # Ties take the average rank: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4) give
    # 4.5 / sqrt(4.5 * 5).
    assert value_order_correlation([0.0, 0.5, 0.5, 1.0]) == pytest.approx(4.5 / np.sqrt(22.5))
    with pytest.raises(ValueError, match="T >= 2"):
        value_order_correlation([0.5])


def numbers(tree) -> list:
    """Every leaf of a nested dict / list."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in numbers(v)]
    return [tree]


@pytest.mark.parametrize("mode", ["anchored", "chained"])
def test_a_critic_that_knows_progress_meets_every_target(mode):
    out = critic_quality(BrightnessCritic(), episodes(), {TASK: OTHER}, mode=mode)
    assert out["episodes"] == {"successful": 4, "failed": 4}
    assert out["voc"]["mean"] == pytest.approx(1.0) and out["voc"]["median"] == pytest.approx(1.0)
    assert out["voc"]["failed_mean"] == pytest.approx(1.0)  # failures rise too, only less far
    # Successes end at progress 1 (done 1), failures near 0.5: perfectly separated.
    assert out["auc_final_progress"]["value"] == 1.0 and out["auc_done"]["value"] == 1.0
    probes = out["probes"]
    # From full brightness back to black loses all of the achieved progress: delta -1, and the
    # progress of the reversed episode stays clipped at 0 (VOC 0).
    assert probes["reversed"]["mean_delta"] == pytest.approx(-1.0)
    assert probes["reversed"]["voc"] == 0.0
    assert probes["static"]["mean_abs_delta"] == 0.0 and probes["static"]["max_abs_delta"] == 0.0
    assert probes["shuffled"]["voc"] < 0.5 < probes["shuffled"]["ordered_voc"]
    wrong = probes["wrong_instruction"]
    assert wrong["final_progress"] == 0.0 and wrong["own_final_progress"] == pytest.approx(1.0)
    assert wrong["auc"] == 1.0
    assert out["passes"] is True and out["unmeasured"] == []
    checks = [out["voc"], out["auc_final_progress"], out["auc_done"], *probes.values()]
    assert all(c["passes"] is True and isinstance(c["target"], str) for c in checks)
    # Plain floats, bools, ints, str and None only: strict JSON holds it as it is.
    assert all(type(x) in (float, int, bool, str, type(None)) for x in numbers(out))
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_a_random_critic_fails_the_targets():
    out = critic_quality(RandomCritic(seed=0), episodes(8), lambda s: OTHER)
    assert out["voc"]["mean"] < 0.5 and out["voc"]["passes"] is False
    assert out["auc_final_progress"]["value"] < 0.9 and out["auc_final_progress"]["passes"] is False
    assert out["auc_done"]["passes"] is False
    assert out["probes"]["static"]["mean_abs_delta"] > 0.2
    assert out["probes"]["static"]["passes"] is False
    assert out["probes"]["wrong_instruction"]["passes"] is False
    assert out["passes"] is False


def test_shuffled_probe_is_seeded():
    a = critic_quality(BrightnessCritic(), episodes(), {TASK: OTHER}, seed=1)
    b = critic_quality(BrightnessCritic(), episodes(), {TASK: OTHER}, seed=1)
    c = critic_quality(BrightnessCritic(), episodes(), {TASK: OTHER}, seed=2)
    assert a == b
    assert a["probes"]["shuffled"]["voc"] != c["probes"]["shuffled"]["voc"]


def test_aucs_are_unmeasured_without_failures():
    out = critic_quality(BrightnessCritic(), episodes()[:4], {TASK: OTHER})
    assert out["auc_final_progress"] == {"value": None, "target": ">= 0.9", "passes": None}
    assert out["unmeasured"] == ["auc_final_progress", "auc_done"]
    assert out["voc"]["failed_mean"] is None and out["passes"] is True


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: critic_quality(c, episodes()[4:], {TASK: OTHER}), "none successful"),
        (lambda c: critic_quality(c, episodes(), {OTHER: TASK}), "no entry for 'brighten"),
        (lambda c: critic_quality(c, episodes(), lambda s: s), "must give a different str"),
        (lambda c: critic_quality(c, episodes(), {TASK: OTHER}, mode="x"), "valid choices"),
        (lambda c: CriticEpisode(np.zeros((3, H, W, 3)), TASK, True), "expected a uint8 array"),
        (lambda c: CriticEpisode(np.zeros((1, H, W, 3), np.uint8), TASK, True), "T >= 2"),
    ],
)
def test_bad_input_raises_a_one_line_error(call, message):
    critic = BrightnessCritic()
    with pytest.raises(ValueError, match=message) as err:
        call(critic)
    assert "\n" not in str(err.value)
    assert critic.cache_info()["misses"] == 0  # refused before asking the critic anything


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "progress.png"
    plot_progress(BrightnessCritic(), episodes(2)[1:3], path, frames_per_episode=3)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["progress.png"]  # no temporary left
