"""`vla-rl fit-verifier`: fit TACO's pseudo-count verifier for a policy on its training data.

Reads top to bottom: load the policy and the demonstrations -> for every (frame, demonstrated
chunk) pair draw K candidates from the fixed noise bank and keep the internal feature of the
candidate closest (L2 over the whole chunk, env units) to the demonstrated chunk, TACO's
"high-fidelity feature search" -> train the Coin Flipping Network on those features with fixed
coin-flip targets and the random prior (vla_rl/cfn.py) -> check how often, on the same data,
the verifier's pick among the K candidates is the one closest to the demonstration -> save the
verifier, fit.json and the loss curve next to the policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.core.config import ConfigError, to_dict
from vla_rl.data.episodes import ChunkData, load_episodes
from vla_rl.io.atomic import atomic_write_json, check_output_location
from vla_rl.io.provenance import provenance
from vla_rl.methods.taco.cfn import CFNConfig, check_cfn_config, train_cfn, training_epochs
from vla_rl.methods.taco.rerank import default_verifier_dir, draw_candidates, select_best
from vla_rl.runs.plots import plot_loss_curve


@dataclass
class FitVerifierConfig:
    """`vla-rl fit-verifier`: fit a TACO pseudo-count verifier (a CFN on the policy's internal
    features) on the policy's training demonstrations."""

    policy: str = "metaworld-flow"
    """A registered policy name or a checkpoint directory whose samples carry extras['feature']
    (flow, diffusion, tokenvla)."""
    dataset: str = ""
    """The policy's training data: a LeRobot v3.0 dataset directory (e.g. from `vla-rl
    collect`) or a LIBERO .hdf5 file."""
    candidates: int = 16
    """K candidates per frame among which the one closest to the demonstrated chunk gives the
    feature (TACO: the 50 noises of its pi0.5 bank, 16 samples for OpenVLA)."""
    deterministic: bool = True
    """Draw candidates as `vla-rl eval` does by default (chain families: the noise-free ODE from
    the bank's initial noises; token families always sample)."""
    noise_seed: int = 42
    """Seed of the fixed noise bank the candidates come from (TACO: 42)."""
    noised_draws: int = 0
    """TACO's Eq. 7-8 samples: per frame, this many more features of the demonstrated chunk
    itself noised to the last sampling step's level (independent noise draws; flow and
    diffusion families), beside the closest candidate's, so the counting network sees draws x
    more in-support samples. 0: the closest candidate only (TACO's released code)."""
    batch_size: int = 256
    """Frames per candidate-sampling call."""
    output_dir: str | None = None
    """Where the verifier goes. None: <checkpoint>/taco_verifier for a checkpoint directory,
    runs/verifiers/<name> for a registered name; `vla-rl eval --rerank taco` looks there."""
    cfn: CFNConfig = field(default_factory=CFNConfig)
    progress: bool = True
    """Show progress bars (frames/s and epochs with ETA)."""


def closest_candidate_features(
    policy: Any, data: ChunkData, cfg: FitVerifierConfig, progress: bool
) -> dict[str, torch.Tensor]:
    """For every frame: all K candidates' features (N, K, F), their L2 distances (N, K) to the
    demonstrated chunk, and the closest candidate's feature (N, F)."""
    from tqdm.auto import tqdm

    n, k = len(data.state), cfg.candidates
    feats, dists = [], []
    bar = tqdm(total=n, unit="frame", desc="candidate features", disable=not progress)
    with torch.no_grad():
        for start in range(0, n, cfg.batch_size):
            idx = np.arange(start, min(start + cfg.batch_size, n))
            obs, actions = data.batch(idx)
            cands = draw_candidates(policy, obs, k, cfg.deterministic, True, cfg.noise_seed)
            if "feature" not in cands.extras:
                raise ConfigError(
                    f"policy {cfg.policy!r} ({policy.policy_type}) exposes no internal feature; "
                    "TACO verifiers need a flow, diffusion or tokenvla policy"
                )
            gap = cands.actions.view(len(idx), k, -1) - actions.view(len(idx), 1, -1)
            dists.append(gap.norm(dim=-1))
            feats.append(cands.extras["feature"].view(len(idx), k, -1).float())
            bar.update(len(idx))
    bar.close()
    all_feats, all_dists = torch.cat(feats), torch.cat(dists)
    closest = all_feats[torch.arange(n), all_dists.argmin(1)]
    return {"candidates": all_feats, "distances": all_dists, "closest": closest}


def noised_target_features(policy: Any, data: ChunkData, cfg: FitVerifierConfig) -> torch.Tensor:
    """(N * noised_draws, F) features of every demonstrated chunk noised to the last sampling
    step's level (the policy's `noised_target_features`), from a generator seeded by
    cfg.noise_seed."""
    if not hasattr(policy, "noised_target_features"):
        raise ConfigError(
            f"--noised-draws needs a flow or diffusion policy (denoising chains); "
            f"{cfg.policy!r} is {policy.policy_type!r}: use --noised-draws 0"
        )
    generator = torch.Generator().manual_seed(cfg.noise_seed)
    out = []
    with torch.no_grad():
        for start in range(0, len(data.state), cfg.batch_size):
            idx = np.arange(start, min(start + cfg.batch_size, len(data.state)))
            obs, actions = data.batch(idx)
            feats = policy.noised_target_features(obs, actions, cfg.noised_draws, generator)
            out.append(feats.flatten(0, 1).float())
    return torch.cat(out)


def selection_check(cfn, found: dict[str, torch.Tensor]) -> dict[str, float]:
    """On the training frames: how often the verifier's pick among the K candidates is the one
    closest to the demonstration (chance: 1 / K), and the mean distance to the demonstrated chunk
    of the verifier's pick, of a uniformly random candidate and of the closest one."""
    n, k, f = found["candidates"].shape
    scores = torch.cat([cfn.pseudo_count(found["candidates"][i : i + 512].reshape(-1, f))
                        for i in range(0, n, 512)])  # fmt: skip
    picked = select_best(scores, k)
    dists = found["distances"]
    return {
        "pick_is_closest": float((picked == dists.argmin(1)).float().mean()),
        "chance": 1 / k,
        "distance_picked": float(dists[torch.arange(n), picked].mean()),
        "distance_random": float(dists.mean()),
        "distance_closest": float(dists.min(1).values.mean()),
    }


def fit_verifier(cfg: FitVerifierConfig) -> dict[str, Any]:
    from vla_rl.core.policy import load_policy

    if cfg.candidates < 1:
        raise ConfigError(f"--candidates must be >= 1, got {cfg.candidates}")
    if cfg.noised_draws < 0:
        raise ConfigError(f"--noised-draws must be >= 0, got {cfg.noised_draws}")
    check_cfn_config(cfg.cfn)
    if not cfg.dataset:
        raise ConfigError("--dataset is required: the policy's training demonstrations")
    if not Path(cfg.dataset).exists():
        raise FileNotFoundError(f"dataset {cfg.dataset!r} does not exist")
    out = Path(cfg.output_dir) if cfg.output_dir else default_verifier_dir(cfg.policy)
    check_output_location(out, directory=True, flag="--output-dir")  # before the fitting
    policy = load_policy(cfg.policy)
    policy.eval()
    images = policy.get_config().get("num_cameras", 0) > 0
    data = ChunkData.build(load_episodes(cfg.dataset, images), policy.chunk_size, images)
    if data.actions.shape[2] != getattr(policy, "action_dim", data.actions.shape[2]):
        raise ConfigError(
            f"dataset actions are {data.actions.shape[2]}-D, the policy's "
            f"{policy.action_dim}-D: not this policy's training data"
        )

    start = time.perf_counter()
    found = closest_candidate_features(policy, data, cfg, cfg.progress)
    features_s = time.perf_counter() - start

    from tqdm.auto import tqdm

    epochs = training_epochs(len(found["closest"]) * (1 + cfg.noised_draws), cfg.cfn)
    bar = tqdm(total=epochs, unit="epoch", desc="fit CFN", disable=not cfg.progress)

    def on_epoch(epoch: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    samples = found["closest"]
    if cfg.noised_draws:
        samples = torch.cat([samples, noised_target_features(policy, data, cfg)])
    start = time.perf_counter()
    cfn, losses = train_cfn(samples, cfg.cfn, on_epoch)
    bar.close()
    fit_s = time.perf_counter() - start

    check = selection_check(cfn, found)
    train_counts = cfn.pseudo_count(found["closest"])
    summary = {
        "policy": cfg.policy,
        "dataset": cfg.dataset,
        "samples": len(data.state),
        "cfn_samples": len(samples),
        "feature_dim": int(found["closest"].shape[1]),
        "losses": [round(x, 5) for x in losses],
        "pseudo_count_train_median": float(train_counts.median()),
        "selection_on_train_frames": check,
        "timing": {"features_s": round(features_s, 1), "fit_s": round(fit_s, 1)},
        "config": to_dict(cfg),
        "provenance": provenance(),
    }
    cfn.save(out, {"policy": cfg.policy, "samples": len(data.state)})
    atomic_write_json(out / "fit.json", summary)
    plot_loss_curve(losses, out / "cfn_loss.png", "TACO verifier fit",
                    "CFN loss (sum of squares over coin flips)")  # fmt: skip
    summary["output_dir"] = str(out)
    return summary
