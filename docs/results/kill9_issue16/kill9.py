"""kill -9 experiment (issue 16): run a short finetune, SIGKILL it at random moments and resume it
(`--resume`) until it finishes; compare with the same run left alone.

    python docs/results/kill9_issue16/kill9.py grpo 20 /tmp/kill9    # method, kills, scratch dir

Prints one JSON line per kill (seconds into the attempt, checkpoint RL/env steps before and
after, whether a checkpoint was being written, workers left alive) and a summary; every fourth
kill during training lands inside a checkpoint's writing; writes
`summary_<method>.json` next to this script.
"""

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

COMMON = [
    "--tasks",
    "button-press-topdown-v3",
    "--eval-episodes",
    "2",
    "--final-eval-episodes",
    "5",
    "--videos",
    "0",
    "--logger",
    "none",
    "--no-progress",
    "--env.num-envs",
    "4",
    "--env.num-workers",
    "1",
    "--env.max-steps",
    "82",
]
BUDGET = {"grpo": 9000, "residual": 1200}  # env steps, as in ARGS
STEP_S = {"grpo": 2.5, "residual": 8.0}  # about one RL step / one checkpoint interval here
ARGS = {
    "grpo": [
        "--method",
        "grpo",
        "--env-steps",
        "9000",
        "--eval-every",
        "3000",
        "--grpo.episodes-per-step",
        "8",
        "--grpo.group-size",
        "4",
        "--grpo.rollout-envs",
        "4",
        "--grpo.rollout-workers",
        "1",
        "--grpo.lr",
        "1e-3",
        "--grpo.minibatch-size",
        "16",
    ],
    "residual": [
        "--method",
        "residual",
        "--env-steps",
        "1200",
        "--eval-every",
        "400",
        "--residual.learning-starts",
        "200",
        "--residual.save-every",
        "200",
        "--residual.demos",
        "none",
        "--residual.batch-size",
        "64",
    ],
}


def workers_alive() -> int:
    """Env worker processes still running (zombies, dead but not yet reaped, do not count)."""
    out = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True)
    alive = 0
    for pid in out.stdout.split():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        alive += "zombie" not in status
    return alive


def state(run: Path) -> dict:
    for d in (run / "checkpoint", run / ".checkpoint.old"):
        if (d / "state.json").is_file():
            s = json.loads((d / "state.json").read_text())
            return {"rl_steps": s.get("rl_steps"), "env_steps": s["env_steps"]}
    return {}


def vla_rl(method: str, run: Path, resume: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vla_rl.cli",
        "finetune",
        *ARGS[method],
        *COMMON,
        "--output-dir",
        str(run),
        *(["--resume"] if resume else []),
    ]


def main(method: str, kills: int, scratch: Path) -> None:
    random.seed(0)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    t0 = time.monotonic()
    straight = scratch / "straight"
    subprocess.run(vla_rl(method, straight, False), check=True, capture_output=True)
    alone_s = time.monotonic() - t0
    run, log, done = scratch / "killed", [], 0
    while True:
        resume = (run / "checkpoint").is_dir() or (run / ".checkpoint.old").is_dir()
        proc = subprocess.Popen(
            vla_rl(method, run, resume),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if done >= kills:
            _, err = proc.communicate()
            assert proc.returncode == 0, err
            break
        before = state(run)
        started = time.monotonic()
        if done % 4 == 3 and before.get("env_steps", 0) < BUDGET[method]:
            # Every fourth kill: inside the next checkpoint's writing, the moment its temporary
            # directory appears (polled every millisecond; a checkpoint takes milliseconds).
            while proc.poll() is None and not list(run.glob(".checkpoint.*.tmp")):
                time.sleep(0.001)
            offset = 0.0
        elif before.get("env_steps", 0) < BUDGET[method]:
            # Still training: wait for the next checkpoint, then kill at a random moment of the
            # step after it (rollout, update, evaluation or the next checkpoint's writing).
            while proc.poll() is None and state(run) == before:
                time.sleep(0.05)
            offset = random.uniform(0.0, STEP_S[method])
        else:  # training is over: the final evaluation (or the start-up before it)
            offset = random.uniform(2.0, 15.0)
        delay = time.monotonic() - started + offset
        try:
            if offset == 0.0 and proc.poll() is None:
                raise subprocess.TimeoutExpired(proc.args, 0)
            proc.wait(timeout=offset)
            continue  # it finished or failed before the kill
        except subprocess.TimeoutExpired:
            writing = bool(list(run.glob(".checkpoint.*.tmp")))
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + 10  # a worker still importing exits when it gets there
        while workers_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        done += 1
        row = {
            "kill": done,
            "after_s": round(delay, 2),
            "resumed": resume,
            "checkpoint_before": before,
            "checkpoint_after": state(run),
            "training_done_before": before.get("env_steps", 0) >= BUDGET[method],
            "checkpoint_being_written": writing,
            "workers_alive_10s_after": workers_alive(),
            "stale_tmp": sorted(p.name for p in run.glob(".*.tmp")),
        }
        log.append(row)
        print(json.dumps(row), flush=True)
    from safetensors.numpy import load_file

    a = load_file(str(straight / "policy/model.safetensors"))
    b = load_file(str(run / "policy/model.safetensors"))
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (straight, run))
    summary = {
        "method": method,
        "kills": done,
        "alone_s": round(alone_s, 1),
        "weights_identical": set(a) == set(b) and all((a[k] == b[k]).all() for k in a),
        "straight": {k: ra[k] for k in ("success_rate", "env_steps")},
        "killed_and_resumed": {k: rb[k] for k in ("success_rate", "env_steps")},
        "per_task_identical": ra["per_task"] == rb["per_task"],
        "left_in_run_dir": sorted(p.name for p in run.iterdir() if p.name.startswith(".")),
        "workers_alive_at_end": workers_alive(),
        "kill_log": log,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "kill_log"}))
    out = Path(__file__).parent / f"summary_{method}.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
