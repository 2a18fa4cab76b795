"""The progress-critic base on a toy critic whose progress is known (a frame's mean brightness):
VLAC's update rule by hand, anchored and chained progress on hand-built episodes, batching,
the shared cache, and the one-line errors."""

import numpy as np
import pytest
import torch

from vla_rl.rewards.progress_critic import ProgressCritic, chain_progress, progress_update

H = W = 4
TASK = "brighten the image"


def frame(value: int) -> np.ndarray:
    """A uniform frame (H, W, 3) whose toy progress is value / 255."""
    return np.full((H, W, 3), value, dtype=np.uint8)


def frames(*values: int) -> np.ndarray:
    return np.stack([frame(v) for v in values])


class BrightnessCritic(ProgressCritic):
    """A documented example of a critic: a frame's progress is its mean brightness p in [0, 1],
    and delta is VLAC's pair value between two such progresses: (pb - pa) / (1 - pa) when b is
    brighter (the fraction of the remaining gained), (pb - pa) / pa when darker (the fraction of
    the achieved lost). Any other instruction scores 0 (VLAC's mismatched-task pairs); done is
    the progress. Records every primitive call to count them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[dict] = []

    @staticmethod
    def level(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(1, 2, 3)) / 255

    def _record(self, kind: str, x: torch.Tensor) -> None:
        grad = torch.is_grad_enabled()
        self.calls.append(
            {"kind": kind, "n": len(x), "device": x.device, "dtype": x.dtype, "grad": grad}
        )

    def _delta_batch(self, frames_a, frames_b, instructions):
        self._record("delta", frames_a)
        pa, pb = self.level(frames_a), self.level(frames_b)
        gained = (pb - pa) / (1 - pa).clamp_min(1e-6)
        lost = (pb - pa) / pa.clamp_min(1e-6)
        d = torch.where(pb >= pa, gained, lost)
        on_task = torch.tensor([s == TASK for s in instructions], device=d.device)
        return torch.where(on_task, d, torch.zeros_like(d))

    def _done_batch(self, frames, instructions):
        self._record("done", frames)
        return self.level(frames)


def test_update_rule_by_hand():
    """Gains take a fraction of the remaining, losses a fraction of the achieved."""
    p = torch.tensor(0.0)
    steps = []
    for d in (0.5, 0.5, -0.5):
        p = progress_update(p, torch.tensor(d))
        steps.append(p.item())
    assert steps == pytest.approx([0.5, 0.75, 0.375])  # -0.5 of 0.75 achieved, not of 0.25 left
    assert chain_progress(torch.tensor([0.5, 0.5, -0.5])).tolist() == pytest.approx(
        [0.0, 0.5, 0.75, 0.375]
    )
    # Elementwise; the extremes reach exactly 0 and 1; d = 0 changes nothing.
    out = progress_update(torch.tensor([0.2, 0.8, 0.3]), torch.tensor([-1.0, 1.0, 0.0]))
    assert out.tolist() == pytest.approx([0.0, 1.0, 0.3])
    assert chain_progress(torch.zeros(0)).tolist() == [0.0]


def test_progress_recovers_a_known_trajectory():
    """From a black first frame both modes give the brightness itself (up, down, up)."""
    critic = BrightnessCritic()
    episode = frames(0, 51, 153, 102, 204, 255)  # progress 0, .2, .6, .4, .8, 1
    truth = [0.0, 0.2, 0.6, 0.4, 0.8, 1.0]
    # Chained deltas by hand: +.2, +.4/.8 = .5, -.2/.6 = -1/3, +.4/.6 = 2/3, +.2/.2 = 1.
    chained_deltas = critic.delta(episode[:-1], episode[1:], TASK)
    assert chained_deltas.tolist() == pytest.approx([0.2, 0.5, -1 / 3, 2 / 3, 1.0], abs=1e-6)
    for mode in ("anchored", "chained"):
        progress = critic.progress(episode, TASK, mode=mode)
        assert progress.dtype == torch.float32 and progress.shape == (6,)
        assert progress.tolist() == pytest.approx(truth, abs=1e-6), mode


def test_anchored_and_chained_differ_from_a_non_zero_start():
    """First frame at brightness .4, then .6, .2, 1. Anchored: delta(f0, ft) from p_0 = 0:
    .2/.6 = 1/3; regress below the start -> 0; 1. Chained: 1/3; then -(.4/.6) of 1/3 -> 1/9;
    then +1 -> 1."""
    critic = BrightnessCritic()
    episode = frames(102, 153, 51, 255)
    anchored = critic.progress(episode, TASK, mode="anchored")
    chained = critic.progress(episode, TASK, mode="chained")
    assert anchored.tolist() == pytest.approx([0, 1 / 3, 0, 1], abs=1e-6)
    assert chained.tolist() == pytest.approx([0, 1 / 3, 1 / 9, 1], abs=1e-6)
    assert critic.progress(episode[:1], TASK).tolist() == [0.0]  # T = 1: no pair to score


def test_delta_signs_antisymmetry_and_round_trip():
    critic = BrightnessCritic()
    a, b = frames(51, 102, 0, 128), frames(204, 153, 0, 191)  # .2->.8, .4->.6, 0->0, .5->.75
    forward, reverse = critic.delta(a, b, TASK), critic.delta(b, a, TASK)
    assert forward.tolist() == pytest.approx([0.75, 1 / 3, 0.0, 0.5], abs=1e-2)
    assert reverse.tolist() == pytest.approx([-0.75, -1 / 3, 0.0, -1 / 3], abs=1e-2)
    # Exactly antisymmetric where pa + pb = 1 (rows 0 and 1), sign-antisymmetric everywhere.
    assert forward[:2].tolist() == pytest.approx((-reverse[:2]).tolist(), abs=1e-6)
    assert torch.equal(forward.sign(), -reverse.sign())
    # Forward then back returns to where it started.
    pa = BrightnessCritic.level(torch.from_numpy(a))
    back = progress_update(progress_update(pa, forward), reverse)
    assert back.tolist() == pytest.approx(pa.tolist(), abs=1e-6)
    # The instruction matters: another task scores 0.
    assert critic.delta(a, b, "open the door").abs().max() == 0


def test_batching_matches_one_at_a_time():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (10, H, W, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (10, H, W, 3), dtype=np.uint8)
    tasks = [TASK] * 9 + ["other"]
    chunked = BrightnessCritic(batch_size=3, cache_size=0)
    single = BrightnessCritic(batch_size=1, cache_size=0)
    got = chunked.delta(a, b, tasks)
    want = torch.cat([single.delta(a[i : i + 1], b[i : i + 1], tasks[i]) for i in range(10)])
    assert torch.equal(got, want) and got[-1] == 0
    assert [c["n"] for c in chunked.calls] == [3, 3, 3, 1]
    assert torch.equal(chunked.done(a, TASK), single.done(a, TASK))
    assert [c["n"] for c in chunked.calls[4:]] == [3, 3, 3, 1]
    # Torch input gives the same answers; results are CPU float32; primitives run without grad
    # on the critic's device.
    assert torch.equal(chunked.delta(torch.from_numpy(a), torch.from_numpy(b), tasks), got)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert all(c["device"] == chunked.device and not c["grad"] for c in chunked.calls)
    assert all(c["dtype"] == torch.uint8 for c in chunked.calls)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_primitives_receive_frames_on_the_critic_device():
    critic = BrightnessCritic(device="cuda")
    out = critic.progress(frames(0, 51, 153), TASK)
    assert out.device.type == "cpu" and out.tolist() == pytest.approx([0, 0.2, 0.6], abs=1e-6)
    assert critic.calls[0]["device"].type == "cuda"


def test_cache_shares_calls_between_shaping_logging_and_eval():
    critic = BrightnessCritic()
    episode = frames(0, 51, 153, 102, 204, 255)
    first = critic.progress(episode, TASK)  # shaping: 5 anchored pairs, one primitive call
    assert len(critic.calls) == 1 and critic.cache_info() == {"hits": 0, "misses": 5, "size": 5}
    # Logging asks the same pairs through delta: answered from the cache, no new call.
    again = critic.delta(episode[[0] * 5], episode[1:], TASK)
    assert len(critic.calls) == 1 and critic.cache_hits == 5
    assert again.tolist() == pytest.approx(first[1:].tolist())
    assert torch.equal(critic.progress(episode, TASK), first) and len(critic.calls) == 1
    # Chained shares (f0, f1) with anchored; its other 4 pairs are new.
    critic.progress(episode, TASK, mode="chained")
    assert critic.calls[-1]["n"] == 4 and critic.cache_misses == 9
    # Another instruction is another question; so is done on the same frames.
    critic.delta(episode[:1], episode[1:2], "other")
    critic.done(episode[:2], TASK)
    assert [c["n"] for c in critic.calls[-2:]] == [1, 2] and critic.cache_misses == 12
    # Repeats inside one call are scored once.
    hits = critic.cache_hits
    repeated = critic.delta(frames(8, 8, 8), frames(16, 16, 16), TASK)
    assert critic.calls[-1]["n"] == 1 and critic.cache_hits == hits + 2
    assert repeated.tolist() == pytest.approx([8 / 247] * 3)  # (16 - 8) / (255 - 8)
    # The key holds the frame's shape: equal bytes in another shape are another image.
    calls = len(critic.calls)
    critic.delta(np.zeros((1, 2, 8, 3), np.uint8), np.zeros((1, 2, 8, 3), np.uint8), TASK)
    critic.delta(np.zeros((1, 8, 2, 3), np.uint8), np.zeros((1, 8, 2, 3), np.uint8), TASK)
    assert len(critic.calls) == calls + 2
    critic.clear_cache()
    assert critic.cache_info() == {"hits": 0, "misses": 0, "size": 0}


def test_cache_is_a_bounded_lru():
    critic = BrightnessCritic(cache_size=2)
    q1, q2, q3 = (frames(v) for v in (10, 20, 30))
    for q in (q1, q2, q1, q3):  # q1 is used again before q3, so q2 is the one evicted
        critic.delta(q, q, TASK)
    assert critic.cache_info() == {"hits": 1, "misses": 3, "size": 2}
    critic.delta(q1, q1, TASK)
    critic.delta(q2, q2, TASK)
    assert critic.cache_info()["hits"] == 2 and critic.cache_info()["misses"] == 4
    off = BrightnessCritic(cache_size=0)
    off.delta(q1, q1, TASK)
    off.delta(q1, q1, TASK)
    assert len(off.calls) == 2 and off.cache_info()["size"] == 0


class PercentCritic(BrightnessCritic):
    """A buggy subclass: VLAC's percent answers not divided by 100."""

    def _delta_batch(self, frames_a, frames_b, instructions):
        return 100 * super()._delta_batch(frames_a, frames_b, instructions)


good = frames(0, 51)
BAD_INPUTS = [
    (lambda c: c.delta(good.astype(np.float32), good, TASK), "expected uint8 RGB frames"),
    (lambda c: c.delta(good[..., 0], good[..., 0], TASK), r"\(N, H, W, 3\), got uint8 \(2, 4, 4\)"),
    (lambda c: c.done(np.zeros((2, H, W, 4), np.uint8), TASK), "expected uint8 RGB frames"),
    (lambda c: c.done(good.tolist(), TASK), "expected a numpy array or torch tensor"),
    (lambda c: c.delta(good, good[:1], TASK), "must have the same shape"),
    (lambda c: c.delta(good, good, [TASK] * 3), "a list of 2 str"),
    (lambda c: c.progress(good, TASK, mode="first"), "valid choices: anchored, chained"),
    (lambda c: c.progress(good, [TASK, TASK]), "instruction must be a str"),
    (lambda c: c.progress(good[:0], TASK), "at least one frame"),
    (lambda c: BrightnessCritic(batch_size=0), "batch_size >= 1"),
]


@pytest.mark.parametrize("call, message", BAD_INPUTS)
def test_bad_input_raises_a_one_line_error(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call(BrightnessCritic())
    assert "\n" not in str(err.value)


class RoundingCritic(BrightnessCritic):
    """Float rounding just past the range, as a sigmoid or softmax head can give."""

    def _delta_batch(self, frames_a, frames_b, instructions):
        return (1 + 5e-5) * super()._delta_batch(frames_a, frames_b, instructions)


def test_rounding_past_the_range_is_clamped():
    d = RoundingCritic().delta(frames(0, 255), frames(255, 0), TASK)
    assert d.tolist() == [1.0, -1.0]


class WrongShapeCritic(BrightnessCritic):
    """A buggy subclass: done as an (n, 1) column instead of (n,)."""

    def _done_batch(self, frames, instructions):
        return super()._done_batch(frames, instructions)[:, None]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: PercentCritic().delta(frames(0), frames(255), TASK), r"outside \[-1, 1\]: 100"),
        (lambda: PercentCritic().delta(frames(255), frames(0), TASK), r"outside \[-1, 1\]: -100"),
        (lambda: WrongShapeCritic().done(frames(0, 9), TASK), r"returned \(2, 1\), expected"),
    ],
)
def test_a_bad_primitive_output_is_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_reversed_numpy_views_are_accepted():
    """A one-frame slice of a reversed view (negative strides that numpy calls contiguous)."""
    frames = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 51, 102)])
    critic = BrightnessCritic()
    view = frames[::-1][:1]
    assert critic.done(view, "task").shape == (1,)
