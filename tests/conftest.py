"""Shared by every suite under tests/: makes tests/testkit.py importable as ``testkit``."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
