"""`vla-rl`: the command line. One subcommand per job; each parses its own config dataclass.

Errors a user can cause (an unknown name, a missing file, a bad value) print one clear line that
names the valid choices and exit with status 2, before anything is written. VLA_RL_DEBUG=1 shows
the full traceback instead.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

from vla_rl.core.config import ConfigError
from vla_rl.core.registry import MissingExtraError, UnknownNameError
from vla_rl.core.slots import WorkerError

USAGE_EXIT = 2
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)


# name -> help. The command `a-b` is `main(args)` in vla_rl/commands/a_b.py, imported only when
# it runs (a command's heavy imports, torch and simulators, never slow down another's).
COMMANDS: dict[str, str] = {
    "finetune": "post-train a base policy with RL (--method residual, ppo, grpo, srpo)",
    "eval": "evaluate a policy on a benchmark's eval split",
    "collect": "roll out a policy on the train split; save a LeRobot v3 dataset",
    "pretrain": "behaviour-clone a policy family on a demonstration dataset",
    "fit-verifier": "fit TACO's pseudo-count verifier (eval --rerank taco) on a policy's data",
    "benchmarks": "list benchmarks, task sets, tasks and policies",
    "doctor": "check the installation and say how to fix what is missing",
    "bench": "measure rollout throughput (engine vs raw simulator vs sequential)",
    "bench-policy": "a policy's chunk latency and engine-vs-sequential eval speed",
    "bench-scale": "rollout scaling over W workers x E envs, local vs Ray, with the time split",
    "tiny-checkpoint": "write a tiny random-weight real-format VLA checkpoint (openvla, pi0, ...)",
    "render-dataset": "render camera frames for a LIBERO dataset from its recorded sim states",
    "fit-critic": "train a small pairwise progress critic on LeRobot datasets with images",
    "world-model": "train (train) or measure (eval) an action-conditioned video world model",
    "critic-quality": "a progress critic's VOC, success AUC and probes on held-out episodes",
    "compare": "paired comparison of results on the same episodes (difference, CI, McNemar)",
}


def usage() -> str:
    lines = ["usage: vla-rl <command> [options]   (vla-rl <command> --help for its options)", ""]
    lines += [f"  {name:<12} {help_}" for name, help_ in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else USAGE_EXIT
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vla-rl: unknown command {command!r}; valid choices: {', '.join(COMMANDS)}",
              file=sys.stderr)  # fmt: skip
        return USAGE_EXIT
    try:
        module = importlib.import_module(f"vla_rl.commands.{command.replace('-', '_')}")
        return module.main(rest)
    except (
        UnknownNameError,
        ConfigError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
        PermissionError,
        WorkerError,
        MissingExtraError,
    ) as err:
        if os.environ.get("VLA_RL_DEBUG"):  # the full traceback, for bug reports
            raise
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if len(lines) > 1:  # a worker's traceback: its headline and the exception it ended in
            lines = [f"{lines[0]} {lines[-1]} (VLA_RL_DEBUG=1 shows the whole traceback)"]
        message = lines[0] if lines else repr(err)
        print(f"vla-rl {command}: error: {message}", file=sys.stderr)
        return USAGE_EXIT
    except OSError as err:
        # A full disk, a read-only or foreign file system: the machine's state, not a bug, so one
        # line too (anything else raised as OSError is a bug and keeps its traceback).
        if err.errno not in DISK_ERRORS or os.environ.get("VLA_RL_DEBUG"):
            raise
        print(f"vla-rl {command}: error: {err.strerror}: {err.filename or ''}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
