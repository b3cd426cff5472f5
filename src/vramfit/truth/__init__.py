"""Ground truth for vramfit's estimates, and the tools that make and score it.

rows.py      one JSON-lines row format for traced, measured and published truth
validate.py  estimate every row and report the errors (torch-free)
published.py published measurements -> rows
trace.py     the real step on fake tensors (tracker.py counts the live storages; distributed.py the layouts)
measure.py   the same step on a CUDA GPU
suite.py     the committed traced-truth suite (data/truth/traced)

Only trace, tracker, distributed and measure import torch, and only when used; `import vramfit` never
imports this package's torch modules.
"""
