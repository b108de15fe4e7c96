"""Reporting: run records -> typed tables -> markdown leaderboards, the HTML board and figures.

- ``frame``: records as a pandas frame, one row per run, every classifier's top-1 keyed by its typed
  (network, exit) pair;
- ``tables``: the table model (``Table``, ``Row``, ``Cell``: per-seed values, mean, std, n, the difference to the
  baseline with its interval, the best of a column) and the builders of each layout (MUSE Tables 1, 6 and 7, cost);
- ``markdown`` (``discbench leaderboard``) and ``html`` (``discbench publish``) write the same tables;
- ``stats`` (Welch's interval, Kendall's tau), ``figures`` (MUSE Figs. 2 and 3, accuracy against cost) and
  ``compression`` (MUSE Table 3).

Nothing here imports torch or a plugin.
"""
