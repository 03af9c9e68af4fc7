"""Policies for test_datagen's worker tests, in a module that spawned workers import cheaply
(no torch, no pytest).  No tests here."""
from __future__ import annotations

import os
import signal

from rcan_sim import datagen


class SuicidalPolicy(datagen.RandomPolicy):
    """Kills its own worker process with SIGKILL when it starts episode 2 (an OOM-killed worker)."""

    def reset(self, seed: int) -> None:
        super().reset(seed)
        if seed == datagen.episode_seed(0, 2):
            os.kill(os.getpid(), signal.SIGKILL)
