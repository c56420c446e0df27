"""Security probes: make the local-fleet helpers and the attacker's helpers importable (pytest runs with
--import-mode=importlib)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "local"))
