"""discbench: a benchmark and leaderboard for feature discrepancy functions in knowledge distillation."""

__version__ = "0.1.0"
