"""One way to derive seeds in the whole code base: a seed from a tuple of integers.

Every random draw of a run (which prompts a step takes, each sample's decoding noise, each
update's masks) gets its own seed from (run seed, step, purpose, index, ...), so a draw does
not depend on what ran before it, on which process or worker runs it, or on batch sizes — and
a resumed or asynchronous run draws exactly what a synchronous uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

# purposes of a step's draws (the third part of `derive_seed(seed, step, purpose, ...)`)
ROLLOUT, UPDATE, DATA, HINTS, EXTRA_PROMPTS, BRANCH = 0, 1, 2, 3, 4, 5


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (numpy's SeedSequence: distinct tuples give independent streams)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
