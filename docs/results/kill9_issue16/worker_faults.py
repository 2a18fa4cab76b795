"""Worker faults (issue 16): kill -9 or SIGSTOP one env worker in the middle of `vla-rl eval` and
of `vla-rl finetune --method grpo`, and put what the run did beside an undisturbed run.

    python docs/results/kill9_issue16/worker_faults.py /tmp/worker_faults [eval] [grpo]
    BACKEND=ray python docs/results/kill9_issue16/worker_faults.py /tmp/ray_faults [eval] [grpo]
    AT_S="8 15" ...   (seconds into the eval and the grpo run at which a worker is hit)
    HIT_IN_TRAINING=1 ...   (hit grpo once its first RL step is logged: a training worker)

Writes worker_faults[_ray]_<commands>.json next to this script. BACKEND=ray (issue 20) runs
both commands with `--env.backend ray` and hits one of the Ray env actors (process title
`ray::EnvWorker`) instead of a worker process of the run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EVAL = [
    "eval",
    "--policy",
    "metaworld-flow",
    "--tasks",
    "button-press-topdown-v3",
    "reach-v3",
    "--episodes",
    "10",
    "--env.num-envs",
    "4",
    "--env.num-workers",
    "2",
    "--no-progress",
]
GRPO = [
    "finetune",
    "--method",
    "grpo",
    "--tasks",
    "button-press-topdown-v3",
    "--env-steps",
    "2500",
    "--eval-every",
    "100000",
    "--eval-episodes",
    "2",
    "--final-eval-episodes",
    "5",
    "--videos",
    "0",
    "--logger",
    "none",
    "--no-progress",
    "--env.max-steps",
    "82",
    "--grpo.episodes-per-step",
    "8",
    "--grpo.group-size",
    "4",
    "--grpo.rollout-envs",
    "4",
    "--grpo.rollout-workers",
    "2",
    "--grpo.lr",
    "1e-3",
    "--grpo.minibatch-size",
    "16",
]


BACKEND = os.environ.get("BACKEND", "local")


def children(pid: int) -> list[int]:
    """The env workers of run `pid`: its spawned processes, or on Ray the env actors' (Ray's
    worker processes are not the run's children; only this run uses Ray here)."""
    if BACKEND == "ray":  # stepping envs now: not one still building its envs (`.__init__`)
        pattern = ["-f", r"^ray::EnvWorker\.run$"]  # nor an idle or just-closed one
    else:
        pattern = ["-P", str(pid), "-f", "multiprocessing.spawn"]
    out = subprocess.run(["pgrep", *pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


# HIT_IN_TRAINING=1: hit the finetune run once its first RL step is logged (the training
# rollout workers are then mid-run), not at a fixed second that may land in an evaluation.
HIT_IN_TRAINING = os.environ.get("HIT_IN_TRAINING") == "1"


def train_reruns_logged(out: Path) -> bool:
    path = out / "metrics.jsonl"
    return path.is_file() and "train/episodes_rerun" in path.read_text()


def train_reruns(out: Path) -> float:
    """Episodes the training rollouts ran again, summed over the RL steps of metrics.jsonl."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0.0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(r.get("train/episodes_rerun", 0.0) for r in rows)


def run(args: list[str], out: Path, fault: str | None, at_s: float, timeout_s: float) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "vla_rl.cli",
        *args,
        "--output-dir",
        str(out),
        "--env.step-timeout-s",
        str(timeout_s),
        "--env.backend",
        BACKEND,
    ]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hit = None
    if fault:
        time.sleep(at_s)
        if HIT_IN_TRAINING and args[0] == "finetune":  # after the first RL step's metrics,
            while proc.poll() is None and not train_reruns_logged(out):  # so mid-training
                time.sleep(0.05)
        workers = children(proc.pid)
        while not workers and proc.poll() is None:  # between envs: wait for the next ones
            time.sleep(0.1)
            workers = children(proc.pid)
        if workers:
            hit = workers[0]
            os.kill(hit, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    stdout, stderr = proc.communicate()
    if hit and fault == "stop":
        try:
            os.kill(hit, signal.SIGKILL)  # the run replaced it; do not leave it stopped
        except ProcessLookupError:
            pass
    res = json.loads((out / "results.json").read_text()) if proc.returncode == 0 else {}
    return {
        "fault": fault,
        "at_s": at_s,
        "worker_hit": hit,
        "exit": proc.returncode,
        "wall_s": round(time.monotonic() - start, 1),
        "stderr_tail": stderr[-300:],
        "success_rate": res.get("success_rate"),
        "per_task": res.get("per_task"),
        "episodes_rerun": res.get("timing", {}).get("episodes_rerun"),
        "train_episodes_rerun": train_reruns(out),
        "rl_steps": res.get("rl_steps"),
        "env_steps": res.get("env_steps"),
    }


def main(scratch: Path) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    only = sys.argv[2:] or ["eval", "grpo"]
    # AT_S="EVAL GRPO": seconds into each run to hit (a quiet machine ends an eval sooner)
    at = [float(x) for x in os.environ.get("AT_S", "12 15").split()]
    for name, args, at_s in (("eval", EVAL, at[0]), ("grpo", GRPO, at[1])):
        if name not in only:
            continue
        for fault in (None, "kill", "stop"):
            out = scratch / f"{name}_{fault or 'calm'}"
            row = run(args, out, fault, at_s, timeout_s=10.0)
            row["command"] = name
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_task"}), flush=True)
    tag = "" if BACKEND == "local" else f"{BACKEND}_"
    out = Path(__file__).with_name(f"worker_faults_{tag}{'_'.join(only)}.json")
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
