from __future__ import annotations

import os

# Two cores here: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
