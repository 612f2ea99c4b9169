from tests.planes import linear, run_with, slow, unit_store

__all__ = ["linear", "run_with", "slow", "unit_store"]
