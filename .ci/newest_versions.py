"""CI: the tests above ran on the newest versions the dependency ranges allow.

Asks pip what an eager upgrade of the project (torch held at the CPU wheel the README pins)
would install; anything besides vla-rl itself is a dependency that is not at its newest
allowed version, and the check fails naming it and both versions.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as tmp:
    report = Path(tmp) / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--upgrade",
         "--upgrade-strategy", "eager", "-e", ".[test,libero]", "torch==2.13.0",
         "--report", str(report)],
        check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wanted = json.loads(report.read_text())["install"]
behind = []
for item in wanted:
    name, newest = item["metadata"]["name"], item["metadata"]["version"]
    if name == "vla-rl":
        continue
    try:
        have = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        continue  # an extra this environment did not install: nothing of it was tested
    behind.append(f"{name} {have} (newest allowed: {newest})")
if behind:
    print("tested on older versions than the ranges allow: " + "; ".join(behind))
    sys.exit(1)
print("every dependency is at the newest version its range allows (torch pinned to 2.13.0)")
