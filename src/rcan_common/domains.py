"""Names of the visual domains (paper 4.1 and 5.2) that configs, the node graph and the
evaluations accept.  What each domain randomizes lives with the simulator (rcan_sim.domains);
this module holds only the names, so the robot side validates a `domain` without the sim.
"""
from __future__ import annotations

DOMAINS = ("canonical", "randomized", "held-out", "mild", "medium", "heavy")
