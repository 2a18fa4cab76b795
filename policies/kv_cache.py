"""transformers' key/value cache by the name the installed version gives it.

The supported range (transformers>=5.5,<6) spans a rename: later 5.x releases call the cache
`cache`, in a model's forward keyword and in its outputs, and warn that `past_key_values` goes
away in 5.40; earlier ones know only `past_key_values`. The families pass and read it here, so
the whole range works without a warning.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn


@functools.cache
def _keyword(forward_type: type) -> str:
    params = inspect.signature(forward_type.forward).parameters  # follows the deprecation wrapper
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(module: nn.Module, cache: Any) -> dict[str, Any]:
    """{name: cache} for `module`'s forward, by the name its version takes."""
    return {_keyword(type(module)): cache}


def output_cache(output: Any) -> Any:
    """The cache a forward with use_cache=True returned."""
    return output["cache"] if "cache" in output else output["past_key_values"]
