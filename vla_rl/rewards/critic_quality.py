"""How good a progress critic is as a dense reward (issue 18 item 5; ../shared/reference/
critics.md sections 3 and 4.5): does its progress rise with time on successful episodes, does it
tell successes from failures, and does it resist the reward-hacking probes.

`critic_quality(critic, episodes, other_instruction)` returns a JSON-serialisable dict:

    mode                   the progress mode every progress call used ("anchored" | "chained").
    episodes               {"successful": n, "failed": m}: how many episodes of each were scored.
    voc                    value-order correlation (GVL / VLAC's VOC: Spearman of progress with
                           time) over the successful episodes: "mean", "median"; "failed_mean"
                           (None without failures) for the success/failure VOC gap (VLAC 0.83 vs
                           0.41); "target" ">= 0.9" on the mean, "passes".
    auc_final_progress     ROC-AUC of each episode's final progress, success vs failure: "value",
                           "target" ">= 0.9", "passes" (both None without both classes).
    auc_done               the same for done on the last frame.
    probes                 each on the successful episodes, with its "target" and "passes":
      reversed             frames in reverse order: "mean_delta" (delta(first, last) of the
                           reversed episode, i.e. from the goal back to the start; target < 0) and
                           "voc" (progress is clipped at 0, so a good critic's reversed progress
                           stays flat: VOC about 0, not -1; reported, not judged).
      static               the first frame repeated T times: "mean_abs_delta" and
                           "max_abs_delta" of its consecutive deltas (target: mean < 0.05).
      shuffled             frames in a seeded random order: "voc" (mean over episodes) against
                           "ordered_voc" (voc.mean); a critic that ignores order scores both alike
                           (target: voc < ordered_voc; the issue gives no number).
      wrong_instruction    the episode scored with another task's instruction: "final_progress"
                           (mean) and "own_final_progress" (mean, its own instruction); "auc" of
                           own vs wrong final progress, the wrong one counted as a failure
                           (target: the issue's AUC target, >= 0.9, as it gives no number here).
    passes                 True when every measured target passes.
    unmeasured             names of the targets that could not be measured (AUCs without both
                           successes and failures).

Numbers are plain floats (or None), so the dict can go straight to `atomic_write_json`.
`plot_progress` draws predicted progress over a few episodes next to their frames.
Shapes: T frames of one episode, H, W image size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_rl.io.atomic import atomic_file
from vla_rl.rewards.progress_critic import MODES, ProgressCritic
from vla_rl.rewards.rank_correlation import spearman

# The targets (VLAC's in-domain numbers, critics.md 1.8 and 4.5).
VOC_TARGET = 0.9
AUC_TARGET = 0.9
STATIC_TARGET = 0.05


@dataclass
class CriticEpisode:
    """One episode to score.

    frames: uint8 RGB (T, H, W, 3), T >= 2, in time order (VOC needs two frames).
    instruction: the episode's task, as the critic reads it.
    success: whether the episode completed its task.
    """

    frames: np.ndarray
    instruction: str
    success: bool

    def __post_init__(self):
        f = self.frames
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            got = f"{f.dtype} {f.shape}" if isinstance(f, np.ndarray) else type(f)
            raise ValueError(f"episode frames: expected a uint8 array (T, H, W, 3), got {got}")
        if len(f) < 2:
            raise ValueError(f"episode frames: need T >= 2 frames, got {len(f)}")
        if not isinstance(self.instruction, str):
            raise ValueError(f"episode instruction must be a str, got {type(self.instruction)}")
        # Positive strides (see the reversed probe): a caller's reversed view becomes a copy.
        self.frames = np.ascontiguousarray(f)


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """ROC-AUC of `scores` (N,) for binary `labels` (N,) (bool or 0/1): the probability that a
    random positive scores above a random negative, ties counted 1/2 (the Mann-Whitney U
    statistic over n_pos * n_neg). 1 separates perfectly, 0.5 is chance, 0 is inverted."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(
            f"roc_auc: need scores and labels of one shape (N,), got {s.shape}, {y.shape}"
        )
    if not np.isin(y, [0, 1]).all() or not np.isfinite(s).all():
        raise ValueError("roc_auc: labels must be bool or 0/1 and scores finite")
    pos, neg = s[y.astype(bool)], s[~y.astype(bool)]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(
            f"roc_auc needs both classes, got {len(pos)} positive and {len(neg)} negative labels"
        )
    # Every (positive, negative) pair: clear to check by hand, and episode counts stay small.
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def value_order_correlation(progress: Sequence[float] | np.ndarray) -> float:
    """VOC (GVL, VLAC's `compute_voc`): Spearman of per-frame progress (T,), T >= 2, with the
    frame index. 1: progress rises with every frame; -1: it falls with every frame.

    Constant progress scores 0, not NaN: a critic that predicts nothing carries no order, and a
    NaN would poison the mean over episodes and break strict JSON."""
    p = np.asarray(progress, dtype=float)
    if p.ndim != 1 or len(p) < 2 or not np.isfinite(p).all():
        raise ValueError(f"VOC needs finite progress (T,) with T >= 2, got shape {p.shape}")
    if np.ptp(p) == 0:
        return 0.0
    return spearman(p, np.arange(len(p)))


def critic_quality(
    critic: ProgressCritic,
    episodes: Sequence[CriticEpisode],
    other_instruction: Callable[[str], str] | Mapping[str, str],
    mode: str = "anchored",
    seed: int = 0,
) -> dict:
    """Score `critic` on `episodes` (at least one successful); the fields are listed in this
    module's docstring.

    other_instruction: for the wrong-instruction probe, another task's instruction for each
        episode's instruction (a function or a mapping); it must differ from it.
    mode: the progress mode ("anchored": the shaping potential; "chained": VLAC's VOC parity).
    seed: of the shuffled probe's permutations.
    """
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}; valid choices: {', '.join(MODES)}")
    episodes = list(episodes)
    successes = [e for e in episodes if e.success]
    failures = [e for e in episodes if not e.success]
    if not successes:
        raise ValueError(
            f"critic_quality needs a successful episode, got {len(episodes)} "
            "episodes and none successful"
        )
    # Asked before any critic call, so a bad mapping fails at once, not after the scoring.
    wrong = [_other(other_instruction, e.instruction) for e in successes]

    def progress(frames: np.ndarray, instruction: str) -> np.ndarray:
        return critic.progress(frames, instruction, mode).numpy()

    own = [progress(e.frames, e.instruction) for e in episodes]
    final = [float(p[-1]) for p in own]
    done = [float(critic.done(e.frames[-1:], e.instruction)[0]) for e in episodes]
    labels = [e.success for e in episodes]
    voc = [value_order_correlation(p) for p, e in zip(own, episodes) if e.success]
    voc_failed = [value_order_correlation(p) for p, e in zip(own, episodes) if not e.success]
    both = bool(failures)
    auc_final = roc_auc(final, labels) if both else None
    auc_done = roc_auc(done, labels) if both else None

    rng = np.random.default_rng(seed)
    reversed_delta, reversed_voc, static, shuffled_voc, wrong_final = [], [], [], [], []
    for e, wrong_instruction in zip(successes, wrong):
        t = len(e.frames)
        # A copy, not a view: a one-frame slice of a reversed view keeps its negative stride
        # (numpy calls it contiguous), which torch.from_numpy refuses.
        backwards = np.ascontiguousarray(e.frames[::-1])
        reversed_delta.append(float(critic.delta(backwards[:1], backwards[-1:], e.instruction)[0]))
        reversed_voc.append(value_order_correlation(progress(backwards, e.instruction)))
        still = np.repeat(e.frames[:1], t, axis=0)
        static.append(critic.delta(still[:-1], still[1:], e.instruction).abs().numpy())
        shuffled_voc.append(
            value_order_correlation(progress(e.frames[_shuffle(rng, t)], e.instruction))
        )
        wrong_final.append(float(progress(e.frames, wrong_instruction)[-1]))
    own_final = [f for f, e in zip(final, episodes) if e.success]
    wrong_auc = roc_auc(
        own_final + wrong_final, [True] * len(own_final) + [False] * len(wrong_final)
    )
    voc_mean = _mean(voc)
    static_mean = _mean([d.mean() for d in static])
    reversed_mean = _mean(reversed_delta)
    shuffled_mean = _mean(shuffled_voc)

    out = {
        "mode": mode,
        "episodes": {"successful": len(successes), "failed": len(failures)},
        "voc": {
            "mean": voc_mean,
            "median": float(np.median(voc)),
            "failed_mean": _mean(voc_failed) if voc_failed else None,
            "target": f"mean >= {VOC_TARGET:g}",
            "passes": voc_mean >= VOC_TARGET,
        },
        "auc_final_progress": _auc_check(auc_final),
        "auc_done": _auc_check(auc_done),
        "probes": {
            "reversed": {
                "mean_delta": reversed_mean,
                "voc": _mean(reversed_voc),
                "target": "mean_delta < 0",
                "passes": reversed_mean < 0,
            },
            "static": {
                "mean_abs_delta": static_mean,
                "max_abs_delta": float(max(d.max() for d in static)),
                "target": f"mean_abs_delta < {STATIC_TARGET:g}",
                "passes": static_mean < STATIC_TARGET,
            },
            "shuffled": {
                "voc": shuffled_mean,
                "ordered_voc": voc_mean,
                "target": "voc < ordered_voc",
                "passes": shuffled_mean < voc_mean,
            },
            "wrong_instruction": {
                "final_progress": _mean(wrong_final),
                "own_final_progress": _mean(own_final),
                "auc": wrong_auc,
                "target": f"auc >= {AUC_TARGET:g}",
                "passes": wrong_auc >= AUC_TARGET,
            },
        },
    }
    checks = {
        "voc": out["voc"],
        "auc_final_progress": out["auc_final_progress"],
        "auc_done": out["auc_done"],
        **out["probes"],
    }
    out["passes"] = all(c["passes"] for c in checks.values() if c["passes"] is not None)
    out["unmeasured"] = [name for name, c in checks.items() if c["passes"] is None]
    return out


def _mean(values) -> float:
    return float(np.mean(values))


def _auc_check(auc: float | None) -> dict:
    passes = None if auc is None else auc >= AUC_TARGET
    return {"value": auc, "target": f">= {AUC_TARGET:g}", "passes": passes}


def _shuffle(rng: np.random.Generator, t: int) -> np.ndarray:
    """A random order of t >= 2 frames other than time order (which would probe nothing)."""
    order = rng.permutation(t)
    while (order == np.arange(t)).all():
        order = rng.permutation(t)
    return order


def _other(other_instruction: Callable[[str], str] | Mapping[str, str], instruction: str) -> str:
    """The wrong-instruction probe's instruction for `instruction`: a str that differs from it."""
    if isinstance(other_instruction, Mapping):
        if instruction not in other_instruction:
            raise ValueError(f"other_instruction has no entry for {instruction!r}")
        other = other_instruction[instruction]
    else:
        other = other_instruction(instruction)
    if not isinstance(other, str) or other == instruction:
        raise ValueError(
            f"other_instruction must give a different str for {instruction!r}, got {other!r}"
        )
    return other


def plot_progress(
    critic: ProgressCritic,
    episodes: Sequence[CriticEpisode],
    path: str | Path,
    frames_per_episode: int = 5,
    mode: str = "anchored",
) -> None:
    """A PNG at `path`, written atomically: one row per episode, its predicted progress over
    time (the shown frames marked) next to `frames_per_episode` frames spread evenly over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = list(episodes)
    if not episodes or frames_per_episode < 1:
        raise ValueError(
            f"plot_progress needs episodes and frames_per_episode >= 1, got "
            f"{len(episodes)} and {frames_per_episode}"
        )
    k = frames_per_episode
    fig, axes = plt.subplots(
        len(episodes),
        1 + k,
        figsize=(4 + 1.6 * k, 2.2 * len(episodes)),
        squeeze=False,
        gridspec_kw={"width_ratios": [2.5] + [1] * k},
    )
    for row, e in zip(axes, episodes):
        p = critic.progress(e.frames, e.instruction, mode).numpy()
        shown = np.linspace(0, len(p) - 1, k).round().astype(int)
        ax = row[0]
        ax.plot(p, marker=".", ms=3)
        ax.plot(shown, p[shown], "o", ms=5, color="tab:red")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("frame")
        ax.set_ylabel(f"progress ({mode})")
        outcome = "success" if e.success else "failure"
        ax.set_title(f"{e.instruction[:40]} ({outcome})", fontsize=9)
        ax.grid(alpha=0.3)
        for img_ax, t in zip(row[1:], shown):
            img_ax.imshow(e.frames[t])
            img_ax.set_title(f"t={t}  p={p[t]:.2f}", fontsize=8)
            img_ax.axis("off")
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")  # the temporary's suffix may not be .png
    finally:
        plt.close(fig)
