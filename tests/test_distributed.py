"""Data-parallel learning (vla_rl.rl.distributed): the helpers by hand, one policy update
(plus PPO's critic update) in 2 gloo processes equals the same update in one process, and so
does a whole `finetune` (what `torchrun --nproc_per_node 2 -m vla_rl.cli finetune` runs).

The 2-process run is what `torchrun --nproc_per_node 2` does, spawned here with
torch.multiprocessing: same initial weights, same batch, same minibatch order on both ranks;
each trains on its shard and the gradients are averaged. The minibatch size is odd and the
batch leaves one sample over, so the shards are unequal (8 / 7) and the last one is empty on
rank 1: the weighting rule in policy_update must still give the one-process gradient.
"""

from __future__ import annotations

import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from toy_benchmark import ToyBenchmark

from vla_rl.core.benchmark import EnvConfig, group_episodes
from vla_rl.core.policy import load_policy
from vla_rl.core.trajectories import Trajectories
from vla_rl.methods.on_policy import PolicyGradientConfig, policy_update
from vla_rl.methods.ppo import PPO, PPOConfig
from vla_rl.policies.diffusion_chunk import DiffusionChunkPolicy
from vla_rl.policies.flow_chunk import FlowChunkPolicy
from vla_rl.policies.token_vla import TokenVLAPolicy
from vla_rl.rl.distributed import (
    all_equal,
    all_sum,
    average_gradients,
    barrier,
    broadcast_object,
    broadcast_parameters,
    gather_shards,
    init_from_env,
    is_main,
    shard,
    shard_bounds,
    world,
)
from vla_rl.rl.fsdp import (
    full_optimizer_state,
    full_state_dict,
    is_sharded,
    keyed_by_name,
    load_optimizer_state,
    shard_policy,
)
from vla_rl.rollout.engine import RolloutEngine

MINIBATCH = 15  # odd: the two shards of a full minibatch hold 8 and 7 samples
POLICY_LR = 1e-2  # _update's policy step: a visible change in one update
VOCAB = ["<pad>", "<unk>", "move", "to", "the", "left", "right"]


# ---- the helpers, by hand ----------------------------------------------------------------------
def test_shard_is_contiguous_balanced_and_covers_the_minibatch():
    items = list(range(10))
    assert [shard(items, r, 3) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    t = torch.tensor([9, 4, 7, 1, 3])  # a permuted minibatch: shards keep its order
    assert shard(t, 0, 2).tolist() == [9, 4, 7] and shard(t, 1, 2).tolist() == [1, 3]
    assert torch.equal(torch.cat([shard(t, r, 4) for r in range(4)]), t)
    assert shard([5], 0, 2) == [5] and shard([5], 1, 2) == []  # fewer samples than ranks
    assert shard(items, 0, 1) == items


def test_helpers_are_identities_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not init_from_env() and world() == (0, 1) and is_main()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not init_from_env()
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([3.0, 4.0])
    average_gradients([a, b])
    assert a.grad.tolist() == [3.0, 4.0] and b.grad is None
    assert all_sum([1.5, 2.0]) == [1.5, 2.0]
    assert all_equal([1.0, -3.0]) and broadcast_object({"a": 1}) == {"a": 1}
    barrier()
    x = torch.arange(6.0).view(3, 2)
    assert gather_shards(x, 3) is x
    broadcast_parameters(torch.nn.Linear(2, 2))  # nothing to do, nothing raised


def test_init_from_env_names_what_torchrun_would_set(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_from_env()


# ---- 2 gloo processes against 1 ----------------------------------------------------------------
FAMILIES = {  # every family with log-prob parts, tiny
    "flow": lambda: FlowChunkPolicy(2, 1, VOCAB, chunk_size=2, hidden=16, num_flow_steps=2),
    "diffusion": lambda: DiffusionChunkPolicy(2, 1, VOCAB, chunk_size=2, hidden=16,
                                              train_steps=10, inference_steps=3),
    "tokenvla": lambda: TokenVLAPolicy(2, 1, VOCAB, chunk_size=2, hidden=16, layers=1, heads=2,
                                       max_words=4),
}  # fmt: skip


def _case(family: str = "flow") -> dict:
    """A tiny policy of the family and grouped toy rollouts with padding; the batch is trimmed
    so that its kept steps are one more than a multiple of MINIBATCH."""
    torch.manual_seed(0)
    policy = FAMILIES[family]()
    bench = ToyBenchmark(horizon=12)
    tasks = bench.tasks("train")
    episodes = group_episodes(tasks, 2, 4, np.random.default_rng(0))
    venv = bench.make_env(tasks, EnvConfig(num_envs=4, num_workers=0, video_size=0))
    try:
        records = RolloutEngine(venv).run(policy, episodes, keep_steps=True, seed=0)
    finally:
        venv.close()
    traj = Trajectories.from_episodes(records)
    lengths = traj.valid.sum(0)
    while int(lengths.sum()) % MINIBATCH != 1:  # drop the last step of the longest episode
        b = int(lengths.argmax())
        lengths[b] -= 1
        traj.valid[lengths[b], b] = False
    score = traj.success.float() + torch.linspace(0, 1, traj.batch_size)
    adv = (score - score.mean())[None].expand_as(traj.rewards) * traj.valid
    return {"policy": policy, "traj": traj, "adv": adv.clone()}


def _update(case: dict, fsdp: bool = False) -> dict:
    """One policy_update (KL to a reference, entropy bonus, 2 epochs, a third of the episodes
    dropped) and one PPO critic update from the case's initial weights; whatever process group
    is active does the rest. fsdp: the policy's and the reference's layers sharded over it."""
    traj = case["traj"]
    policy = copy.deepcopy(case["policy"])
    reference = copy.deepcopy(case["policy"]).eval().requires_grad_(False)
    broadcast_parameters(policy)  # equal already; a launch would rely on it after init
    if fsdp:
        assert shard_policy(policy) >= 1 and shard_policy(reference) >= 1 and is_sharded(policy)
    pg = PolicyGradientConfig(lr=POLICY_LR, epochs=2, minibatch_size=MINIBATCH, reduction="token",
                              kl_coef=0.1, entropy_coef=0.01)  # fmt: skip
    optimizer = torch.optim.Adam(policy.parameters(), lr=pg.lr)
    keep = torch.ones(traj.batch_size, dtype=torch.bool)
    keep[::3] = False  # dropped groups: in the KL's mean, not in the policy gradient's
    shuffle = torch.Generator().manual_seed(0)
    metrics = policy_update(policy, optimizer, traj, case["adv"], keep, pg, reference, shuffle)
    torch.manual_seed(1)  # the critic's initialisation and minibatch order
    ppo = PPO(PPOConfig(minibatch_size=MINIBATCH, value_epochs=2), policy, ToyBenchmark(),
              ["left", "right"])  # fmt: skip
    critic_start = copy.deepcopy(ppo.critic.state_dict())
    ppo.advantages(traj)
    metrics.update(ppo.extra_update(traj))
    if fsdp:  # between calls each rank holds its slice only, not the gathered weights
        local = sum(p.to_local().numel() for p in policy.parameters() if isinstance(p, DTensor))
        assert 0 < local < sum(p.numel() for p in case["policy"].parameters())
    moments = full_optimizer_state(policy, optimizer) if fsdp else None
    return {"policy": full_state_dict(policy), "critic": ppo.critic.state_dict(),
            "critic_start": critic_start, "metrics": metrics, "moments": moments}  # fmt: skip


def _stepped_adam(policy: torch.nn.Module, foreach: bool | None = None) -> torch.optim.Adam:
    """An Adam with moments: one step from gradients that differ per parameter."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, foreach=foreach)
    for i, p in enumerate(policy.parameters()):
        p.grad = torch.full_like(p, 0.1 * (i + 1))
    optimizer.step()
    return optimizer


def _resume_across_formats(case: dict) -> None:
    """A one-process checkpoint's Adam state (torch's, by index) loads into a sharded policy's
    optimizer, and a sharded one's (by name) into a plain one: the same moments either way."""
    plain = copy.deepcopy(case["policy"])
    written = _stepped_adam(plain).state_dict()
    names = [name for name, _ in plain.named_parameters()]  # the optimizer's order
    sharded = copy.deepcopy(case["policy"])
    shard_policy(sharded)
    reader = torch.optim.Adam(sharded.parameters(), lr=1e-3, foreach=False)
    load_optimizer_state(sharded, reader, written)
    assert all(g["foreach"] is False for g in reader.param_groups)  # the reader's, kept
    back = full_optimizer_state(sharded, reader)  # whole on rank 0, empty on the others
    if dist.get_rank() == 0:
        for i, name in enumerate(names):
            for k, v in written["state"][i].items():
                assert torch.equal(back["state"][name][k], v), (name, k)
    by_name = keyed_by_name(plain, torch.optim.Adam(plain.parameters()), written)
    again = copy.deepcopy(case["policy"])
    reread = torch.optim.Adam(again.parameters(), lr=1e-3)
    load_optimizer_state(again, reread, by_name)  # by name, into a plain optimizer
    for i in range(len(names)):
        for k, v in written["state"][i].items():
            assert torch.equal(reread.state_dict()["state"][i][k], v), (names[i], k)


def _collectives_by_hand(rank: int) -> None:
    """Hand-checked semantics of the collectives, on 2 ranks."""
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    c = torch.nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([3.0, 4.0])
    b.grad = torch.tensor([6.0]) if rank == 0 else None  # rank 1's shard did not use b
    average_gradients([a, b, c])
    assert a.grad.tolist() == [2.0, 3.0] and b.grad.tolist() == [3.0] and c.grad is None
    assert all_sum([rank + 1.0, 10.0]) == [3.0, 20.0]
    rows = torch.arange(10.0).view(5, 2)  # 5 rows over 2 ranks: shards of 3 and 2
    start, end = shard_bounds(5, rank, 2)
    assert torch.equal(gather_shards(rows[start:end], 5), rows)
    assert all_equal([1.5, -2.0]) and all_equal([])
    assert not all_equal([1.5, -2.0 if rank == 0 else -2.0 + 1e-12])  # exact, not to a tolerance
    assert broadcast_object({"rank": rank}) == {"rank": 0}
    barrier()
    assert world() == (rank, 2) and is_main() == (rank == 0)


def _worker(rank: int, world_size: int, port: int, path: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))  # fmt: skip
    assert init_from_env(timeout_s=60)
    try:
        _collectives_by_hand(rank)
        case = torch.load(path, weights_only=False)
        torch.save(_update(case), f"{path}.rank{rank}")
        torch.save(_update(case, fsdp=True), f"{path}.fsdp.rank{rank}")
        _resume_across_formats(case)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_gloo_ranks_match_one_process(tmp_path, family):
    """Replicated and sharded: the tokenvla family reads its token head's weight outside the
    head's forward, which sharding layer by layer got wrong (vla_rl.rl.fsdp)."""
    case = _case(family)
    path = str(tmp_path / "case.pt")
    torch.save(case, path)
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    single = _update(case)
    for kind in ("rank", "fsdp.rank"):  # replicated weights, then sharded
        ranks = [torch.load(f"{path}.{kind}{r}", weights_only=False) for r in range(2)]
        starts = {"policy": case["policy"].state_dict(), "critic": single["critic_start"]}
        lrs = {"policy": POLICY_LR, "critic": PPOConfig().value_lr}  # _update's
        for part in ("policy", "critic"):
            for name in single[part]:
                # the ranks took the same steps from the same averaged gradients: bit for bit
                assert torch.equal(ranks[0][part][name], ranks[1][part][name]), (kind, name)
            assert_alike_after_adam(ranks[0][part], single[part], starts[part], lrs[part],
                                    f"{kind} {part}")  # fmt: skip
        assert single["metrics"].keys() == ranks[0]["metrics"].keys()
        for name, value in single["metrics"].items():
            assert ranks[0]["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (
                kind, name)  # fmt: skip
    assert single["metrics"]["kl_to_reference"] > 0 and single["metrics"]["value_loss"] > 0
    # the sharded run's Adam moments, gathered whole, are the one process's
    state = ranks[0]["moments"]["state"]
    for name, value in single["policy"].items():
        if name in state:
            assert state[name]["exp_avg"].shape == value.shape, name


# ---- a whole finetune: 2 gloo ranks against 1 process ------------------------------------------
def _finetune_config(output_dir: str | None, fsdp: bool = False):
    """grpo on one Meta-World task, two RL steps (test_policy_gradient's end-to-end settings);
    `fsdp`: the ranks shard the policy's layers (--grpo.fsdp, no effect in one process)."""
    from vla_rl.commands.finetune import FinetuneConfig

    cfg = FinetuneConfig(
        method="grpo", tasks=("button-press-topdown-v3",), env_steps=1400, eval_every=1400,
        eval_episodes=1, final_eval_episodes=1, videos=0, output_dir=output_dir, logger="none",
        progress=False, env=EnvConfig(num_envs=2, num_workers=0, video_size=0, max_steps=82),
    )  # fmt: skip
    g = cfg.grpo
    g.episodes_per_step, g.group_size, g.rollout_envs, g.rollout_workers = 16, 4, 4, 0
    g.lr, g.minibatch_size = 1e-3, 16  # a visible change in two steps; 4+ minibatches a step
    g.fsdp = fsdp
    return cfg


def _finetune_worker(
    rank: int, world_size: int, port: int, root: str, out: str, fsdp: bool
) -> None:
    """One torchrun rank: the environment torchrun sets, then the command's own entry point.
    The run takes the default output directory (runs/finetune/grpo/<timestamp>, under root),
    which each rank names for itself (their timestamps may differ): rank 0 alone creates it."""
    from vla_rl.commands.finetune import finetune

    torch.set_num_threads(1)
    os.chdir(root)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))  # fmt: skip
    try:
        res = finetune(_finetune_config(None, fsdp))
        assert dist.is_initialized() and world() == (rank, world_size)
        torch.save(res, os.path.join(out, f"result.rank{rank}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def assert_alike_after_adam(two: dict, one: dict, start: dict, lr: float, label: str) -> None:
    """Two trainings that took the same Adam steps from gradients summed in another order (2
    ranks' all_reduce over sharded minibatches vs one process) agree to a reordered sum, except
    where Adam divides a near-zero gradient by its near-zero sqrt(v): such a weight can step by
    up to about lr either way. Measured (one update, this file's case; the CI machine of
    2026-12-04): the policies within 7e-7 everywhere, the tokenvla case's PPO critic 5 of its
    first layer's 1024 weights off by up to 7e-4 (value lr 1e-3), 0.2% of its weights beyond
    1e-5, the whole off by 8e-4 of what it moved (a previous CPU: within 1e-5 everywhere).
    Hence: every weight within 2 lr, at most 1% beyond 1e-5, the whole within 1% of the move.
    Integer and bool entries exactly."""
    assert two.keys() == one.keys(), label
    floats = [n for n, v in one.items() if v.is_floating_point()]
    for name in one.keys() - set(floats):
        assert torch.equal(two[name], one[name]), (label, name)
    flat = {k: torch.cat([d[n].double().flatten() for n in floats]) for k, d in
            {"two": two, "one": one, "start": start}.items()}  # fmt: skip
    diff = (flat["two"] - flat["one"]).abs()
    moved = (flat["one"] - flat["start"]).norm()
    assert moved > 0, f"{label}: the update did nothing"
    assert diff.max() <= 2 * lr, f"{label}: a weight off by {diff.max():.2e} > 2 lr"
    off = float((diff > 1e-5).double().mean())
    assert off <= 0.01, f"{label}: {off:.2%} of the weights off by more than 1e-5"
    assert diff.norm() < 0.01 * moved, f"{label}: off by {diff.norm() / moved:.2e} of the move"


def assert_trained_like_one_process(ranks_policy, one_policy) -> None:
    """The policy the ranks wrote is the one process's, to what two RL steps make of a reordered
    sum: the exact check of the update is test_two_gloo_ranks_match_one_process. Here the first
    update's last bits change the second step's sampled actions, and PPO's ratio clipping turns
    a ratio on either side of its bound into a step of about lr: measured, the whole off by
    2.3e-5 of what it moved on one CPU and 7.8e-3 on another (8.6e-4 there with the clipping
    off). A writer that gathers the wrong weights (the base's, one shard) is off by about 1."""
    two = load_policy(str(ranks_policy)).state_dict()
    one = load_policy(str(one_policy)).state_dict()
    base = load_policy("metaworld-flow").state_dict()
    assert two.keys() == one.keys()
    flat = {k: torch.cat([d[n].flatten() for n in one]) for k, d in
            {"two": two, "one": one, "base": base}.items()}  # fmt: skip
    moved = (flat["one"] - flat["base"]).norm()
    assert moved > 0.1  # the update did something
    off = (flat["two"] - flat["one"]).norm() / moved
    assert off < 0.05, f"the ranks' policy is off by {off:.2e} of what the updates moved"


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp"])
def test_two_gloo_ranks_finetune_like_one_process(tmp_path, fsdp):
    """The whole command under torchrun: eval points, checkpoints and the written policy; with
    fsdp the ranks gather the sharded weights for each of them (vla_rl.rl.fsdp)."""
    from vla_rl.commands.finetune import finetune

    root = tmp_path / "ranks"
    root.mkdir()
    args = (2, _free_port(), str(root), str(tmp_path), fsdp)
    torch.multiprocessing.spawn(_finetune_worker, args=args, nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"result.rank{r}", weights_only=False) for r in range(2)]
    res = finetune(_finetune_config(str(tmp_path / "single")))

    # one writer: one run directory, with the files of a one-process run and no line twice
    (run,) = (root / "runs" / "finetune" / "grpo").iterdir()
    assert ranks[0] == ranks[1]  # every rank returns rank 0's results
    assert ranks[0]["policy_dir"] == str(run.relative_to(root) / "policy")
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in (tmp_path / "single").iterdir() if not p.name.startswith(".")
    )
    assert (run / "results.json").is_file() and not (run / ".lock").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())
    for key in ("env_steps", "rl_steps", "train_episodes"):  # the same rollouts as one process
        assert ranks[0][key] == res[key], key

    assert_trained_like_one_process(run / "policy", res["policy_dir"])


def _mismatched_worker(rank: int, world_size: int, port: int, root: str) -> None:
    """A rank launched with another seed: its rollouts differ from rank 0's."""
    from vla_rl.commands.finetune import finetune

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))  # fmt: skip
    cfg = _finetune_config(os.path.join(root, "run"))
    cfg.seed, cfg.env.max_steps, cfg.grpo.episodes_per_step = rank, 20, 4  # one short step
    try:
        finetune(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_whose_rollouts_differ_stop_with_an_error(tmp_path):
    with pytest.raises(Exception, match="rollouts differ between the ranks"):
        torch.multiprocessing.spawn(_mismatched_worker, args=(2, _free_port(), str(tmp_path)),
                                    nprocs=2, join=True)  # fmt: skip
