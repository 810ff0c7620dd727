"""The stream check core (one implementation of SSE parsing and lateness), wherever it lives.

Inside the Pi the bench copies ``stream_check.py`` next to this package; in the
repository it is the collection's module_utils. The file is looked for in those
two places explicitly: a bare ``import stream_check`` could otherwise find some
other ``stream_check`` on sys.path first (a directory of that name is importable
as a namespace package, e.g. tests/stream_check).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve()
_PLACES = (_HERE.parents[1], _HERE.parents[2] / "collections/ansible_collections/pi5/streaming/plugins/module_utils")
_FOUND = next((place for place in _PLACES if (place / "stream_check.py").is_file()), None)
if _FOUND is None:
    raise ImportError(f"stream_check.py is in none of {[str(place) for place in _PLACES]}")
if str(_FOUND) not in sys.path:
    sys.path.insert(0, str(_FOUND))

import stream_check as core  # noqa: E402  (after the search path above)

__all__ = ["core"]
