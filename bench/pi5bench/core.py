"""The stream check core (one implementation of SSE parsing and lateness), wherever it lives.

Inside the Pi the bench copies ``stream_check.py`` next to this package; in the
repository it is the collection's module_utils.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import stream_check as core
except ImportError:  # running from the repository
    _MODULE_UTILS = (
        Path(__file__).resolve().parents[2] / "collections/ansible_collections/pi5/streaming/plugins/module_utils"
    )
    sys.path.insert(0, str(_MODULE_UTILS))
    import stream_check as core

__all__ = ["core"]
