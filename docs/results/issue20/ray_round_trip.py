"""The round trip of one Ray actor call on this machine: a no-op actor method given the payload
of a 4-slot step reply (4 observations of Meta-World's 39-D state), 1000 calls, without and
with a get timeout (the Ray backend waits with one), twice each. Usage:

    python docs/results/issue20/ray_round_trip.py
"""

import time

import numpy as np
import ray

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=40)


@ray.remote(num_cpus=1)
class Echo:
    def run(self, x):
        return x


echo = Echo.remote()
ray.get(echo.run.remote(1))
payload = [{"state": np.zeros(39, np.float32)}] * 4
for label, kwargs in (("no timeout", {}), ("timeout 600 s", {"timeout": 600.0})):
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(1000):
            ray.get(echo.run.remote(payload), **kwargs)
        ms = (time.perf_counter() - start) / 1000 * 1e3
        print(f"{label}: {ms:.3f} ms per round trip")
ray.shutdown()
