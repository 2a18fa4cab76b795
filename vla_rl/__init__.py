"""vla-rl: post-train robot manipulation policies with reinforcement learning.

The core (this package) defines the interfaces; adapters live in `vla_rl.policies`,
`vla_rl.benchmarks` and `vla_rl.world_models` and are resolved lazily through the registries.
"""

__version__ = "0.1.0"
