"""Where this machine keeps what the project converts once and shares between processes:
converted backbones (cloud side) and public edge kits (device side). Both sides read the same
`$SPA_CACHE`, so the path lives here, beside the contract, not in either side's package."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$SPA_CACHE, or ~/.cache/spa."""
    env = os.environ.get("SPA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spa"
