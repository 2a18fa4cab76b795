"""TACO test-time reranking: a policy wrapper that samples K candidate chunks and executes one.

TACO (../shared/reference/methods.md, section 6): after behaviour cloning, a generative policy
still samples from several action modes, some of which fail. At every decision step draw K
candidate chunks in one batched call (each observation encoded once, the encoding shared by its
K candidates), score each candidate's internal feature with a pseudo-count verifier (a Coin
Flipping Network fitted on the policy's own features over its training data, vla_rl/cfn.py) and
execute the most in-support one: i* = argmax_k N(h_k). No weights change.

Selection: "pseudo-count" (TACO) or "random" (a uniformly random candidate: the control that
spends the same compute without a verifier). Noise: "fresh" draws new sampling noise every call;
"fixed" re-seeds a generator every call so candidate k always gets the same noise (TACO's fixed
bank of seed-42 noises), which makes the choice a deterministic function of the observation.
Shapes: B observations, K candidates, candidates' rows observation-major (b * K + k).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vla_rl.core import noise as noise_streams
from vla_rl.core.policy import BasePolicy, naive_candidates
from vla_rl.core.registry import check_choice
from vla_rl.core.types import ActionSample, Observation, obs_batch_size
from vla_rl.methods.taco.cfn import VERIFIER_CONFIG

SELECTIONS = ("pseudo-count", "random")
NOISES = ("fresh", "fixed")

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""features (B * K, F) -> scores (B * K,); higher is better (a pseudo-count)."""


def draw_candidates(
    base: BasePolicy,
    obs: Observation,
    num_candidates: int,
    deterministic: bool,
    fixed_noise: bool,
    noise_seed: int = 42,
    share_prefix: bool = True,
) -> ActionSample:
    """The base's K candidates per observation (B * K rows), from the fixed noise bank seeded by
    `noise_seed` or from fresh noise; by naive batching when not `share_prefix`. Where the base's
    deterministic sampling is an argmax (token families) K > 1 candidates are sampled instead,
    or they would all be the same chunk."""
    if num_candidates > 1 and not base.deterministic_candidates_differ:
        deterministic = False
    if not share_prefix:
        return naive_candidates(base, obs, num_candidates, deterministic)
    generator = torch.Generator().manual_seed(noise_seed) if fixed_noise else None
    return base.sample_candidates(obs, num_candidates, deterministic, generator)


def select_best(scores: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """Index (B,) of the highest-scoring candidate of each observation; scores (B * K,).
    Ties go to the lowest index."""
    return scores.view(-1, num_candidates).argmax(1)


class RerankPolicy(BasePolicy):
    """A BasePolicy that executes the best of `num_candidates` chunks of `base`.

    The chosen rows keep the base's extras (chain, tokens, feature) and add "pseudo_count" (B,)
    (NaN under random selection). `log_prob` is the base's likelihood of the chosen chunk, not
    of the best-of-K distribution (which has no closed form), so this wrapper is for evaluation,
    not for on-policy training.
    """

    policy_type = "rerank"

    def __init__(
        self,
        base: BasePolicy,
        scorer: Scorer | None,
        num_candidates: int,
        selection: str = "pseudo-count",
        noise: str = "fresh",
        noise_seed: int = 42,
        share_prefix: bool = True,
    ):
        """noise_seed: the fixed bank's seed (TACO: 42). share_prefix=False draws the candidates
        by naive batching (every observation re-encoded K times): the same choice at a higher
        cost, kept to measure what sharing saves (`vla-rl bench-policy --rerank`)."""
        super().__init__()
        check_choice("selection", selection, SELECTIONS)
        check_choice("noise", noise, NOISES)
        if not share_prefix and noise == "fixed":
            raise ValueError("naive batching draws fresh noise only; use --noise fresh")
        if num_candidates < 1:
            raise ValueError(f"the number of candidates must be >= 1, got {num_candidates}")
        if selection == "pseudo-count" and scorer is None:
            raise ValueError("pseudo-count selection needs a scorer (a fitted TACO verifier)")
        self.base, self.scorer = base, scorer
        self.num_candidates, self.selection = num_candidates, selection
        self.noise, self.noise_seed, self.share_prefix = noise, noise_seed, share_prefix
        self.chunk_size = base.chunk_size

    @torch.no_grad()
    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        b, k = obs_batch_size(obs), self.num_candidates
        candidates = draw_candidates(self.base, obs, k, deterministic, self.noise == "fixed",
                                     self.noise_seed, self.share_prefix)  # fmt: skip
        if self.selection == "random":
            u = noise_streams.uniform(noise_streams.noise_keys(obs), b, (), "rerank")
            best = (u * k).long().clamp_max(k - 1)  # each row's own stream (vla_rl.core.noise)
            scores = torch.full((b * k,), float("nan"))
        else:
            if "feature" not in candidates.extras:
                raise ValueError(
                    f"policy {self.base.policy_type!r} exposes no internal feature in its "
                    "samples (extras['feature']); TACO needs one"
                )
            scores = self.scorer(candidates.extras["feature"]).flatten()
            best = select_best(scores, k)
        rows = torch.arange(b) * k + best
        chosen = candidates.index(rows)
        chosen.extras["pseudo_count"] = scores[rows]
        return chosen

    def log_prob(self, obs: Observation, sample: ActionSample) -> torch.Tensor:
        return self.base.log_prob(obs, sample)

    def wrap_env(self, venv: Any) -> Any:
        return self.base.wrap_env(venv)

    def save_pretrained(self, directory) -> None:
        raise NotImplementedError(
            "a RerankPolicy is built at evaluation time from a policy and a verifier "
            "(`vla-rl eval --rerank taco`); save those two instead"
        )


RERANKS = ("none", "taco", "random")


def default_verifier_dir(policy: str) -> Path:
    """Where `fit-verifier` saves a policy's verifier: inside a checkpoint directory
    (taco_verifier/), or runs/verifiers/<name> for a registered name (a bundled checkpoint lives
    inside the installed package, which is not the place for a user's fit)."""
    path = Path(policy)
    if (path / "config.json").is_file():
        return path / "taco_verifier"
    return Path("runs/verifiers") / policy


def find_verifier(policy: str) -> Path:
    """The verifier `eval --rerank taco` uses without --verifier: the user's own fit
    (`default_verifier_dir`) when there is one, else the one a bundled base ships with (its
    checkpoint's taco_verifier/, fitted by the commands in that checkpoint's README.md)."""
    fitted = default_verifier_dir(policy)
    if (fitted / VERIFIER_CONFIG).is_file():
        return fitted
    from vla_rl.core.registry import POLICIES

    entry = POLICIES.get(policy) if policy in POLICIES else None
    shipped = getattr(entry, "path", None)  # a bundled checkpoint's directory
    if shipped is not None and (Path(shipped) / "taco_verifier" / VERIFIER_CONFIG).is_file():
        return Path(shipped) / "taco_verifier"
    return fitted  # absent: CoinFlipNetwork.load says how to fit one


def rerank_policy(
    base: BasePolicy,
    policy: str,
    rerank: str,
    num_candidates: int,
    noise: str = "fresh",
    verifier: str | None = None,
) -> BasePolicy:
    """`base` as `vla-rl eval --rerank` asks: unchanged ("none"), TACO ("taco": the verifier
    from `verifier`, default `find_verifier(policy)`), or a random candidate ("random")."""
    from vla_rl.methods.taco.cfn import CoinFlipNetwork

    check_choice("rerank", rerank, RERANKS)
    check_choice("noise", noise, NOISES)
    if rerank == "none":
        return base
    if rerank == "random":
        return RerankPolicy(base, None, num_candidates, "random", noise)
    cfn = CoinFlipNetwork.load(verifier or find_verifier(policy))
    return RerankPolicy(base, cfn.pseudo_count, num_candidates, "pseudo-count", noise)
