"""Where the data that ships with the collector lives: catalogs and default config.

A wheel carries them in ``otaudit_collector/_bundled`` (see collector/setup.py); an
editable install reads them from the repository root, where their canonical copies are.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundled_dir"]

_PACKAGE = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """Return the bundled folder ``name`` ("catalogs" or "config")."""
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parent.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"the bundled {name!r} folder is missing from this installation of otaudit-collector; "
        "reinstall it from a full checkout (pip install ./collector)"
    )
