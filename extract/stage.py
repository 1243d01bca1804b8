"""`make features`: one writer per cache, then the local engine (extract/features.py) or Ray (extract/shard.py).

Reads DATA; writes FEATURES (and, with ENGINE=ray, its shard files) under FEATURES.lock.
Example: python -m extract --data data/train --features artifacts/features.h5 --engine ray --shards 8
"""
from core.lock import output_lock

from .features import Settings, extract_features, make_plan


def run(s: Settings) -> int:
    """Stage 1 under the FEATURES lock (a second run on the same cache exits 2 at once), on the chosen engine.

    The run's plan (backbone, size, layers, weights, precision, image set) is resolved here, once."""
    with output_lock(s.features, "FEATURES"):
        plan = make_plan(s)
        if s.engine == "ray":
            from .shard import run_sharded  # Ray is an optional extra: imported only when asked for

            run_sharded(plan)
            return 0
        return extract_features(plan)
