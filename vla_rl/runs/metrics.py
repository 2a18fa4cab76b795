"""Training metrics: always a metrics.jsonl file, plus TensorBoard (default) or wandb (offline).

wandb runs offline unless the user sets WANDB_MODE themselves: nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vla_rl.core.registry import check_choice

LOGGERS = ("tensorboard", "wandb", "none")


class MetricsLogger:
    def __init__(
        self, run_dir: str | Path, backend: str = "tensorboard", config: dict | None = None
    ):
        check_choice("logger", backend, LOGGERS)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered
        self._tb = self._wandb = None
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        elif backend == "wandb":
            try:
                import wandb
            except ImportError as err:
                raise ImportError("--logger wandb needs `pip install wandb`") from err
            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(dir=str(self.run_dir), config=config or {}, reinit=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        for key, value in metrics.items():
            if not isinstance(value, (int, float)):
                continue
            if self._tb is not None:
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
