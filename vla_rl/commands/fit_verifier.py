"""`vla-rl fit-verifier`: fit TACO's pseudo-count verifier on a policy's training data
(the fitting itself: vla_rl/methods/taco/fit.py)."""

from __future__ import annotations

from vla_rl.core.config import parse_cli


def main(args: list[str]) -> int:
    from vla_rl.methods.taco.fit import FitVerifierConfig, fit_verifier

    cfg = parse_cli(
        FitVerifierConfig, args, prog="vla-rl fit-verifier", description=FitVerifierConfig.__doc__
    )
    res = fit_verifier(cfg)
    check = res["selection_on_train_frames"]
    print(
        f"\nverifier for {cfg.policy}: {res['samples']} frames, {res['feature_dim']}-D features, "
        f"loss {res['losses'][0]:.3f} -> {res['losses'][-1]:.3f}; on the training frames its "
        f"pick among K = {cfg.candidates} is the one closest to the demonstration "
        f"{check['pick_is_closest']:.2f} of the time (chance {check['chance']:.2f})\n"
        f"saved to {res['output_dir']} (vla-rl eval --policy {cfg.policy} --rerank taco "
        f"--verifier {res['output_dir']})"
    )
    return 0
