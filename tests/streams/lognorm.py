"""Debian's lognormalizer (liblognorm-utils; ``tests/setup`` installs it): liblognorm's own CEF
parser, which otaudit did not write, reading CEF lines back into their header and extensions.

liblognorm 2.0.6 drops the first character of the first extension key when the extension
follows the header's last ``|`` directly, as CEF writes it (``|3|externalId=..`` reads as
``xternalId``); a space there is read as the separator it is, so :func:`parse_cef` puts one in
before handing each line over. Nothing else of the line is changed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

LOGNORMALIZER = shutil.which("lognormalizer") or "/usr/bin/lognormalizer"
_HEADER_END = re.compile(r"^((?:[^|\\]|\\.)*\|){7}")  # the seven header fields, escapes included


def parse_cef(lines: list[str], folder: Path) -> list[dict[str, Any]]:
    """Each CEF line as liblognorm reads it: ``{"DeviceVendor", ..., "Severity", "Extensions": {...}}``."""
    if not Path(LOGNORMALIZER).is_file():
        pytest.fail(f"{LOGNORMALIZER} is missing: install Debian's liblognorm-utils (bash tests/setup does)")
    rulebase = folder / "cef.rulebase"
    rulebase.write_text("version=2\nrule=:%cef:cef%\n", encoding="utf-8")
    given = []
    for line in lines:
        header = _HEADER_END.match(line)
        assert header is not None, f"no CEF header of seven fields in {line[:200]!r}"
        given.append(line[: header.end()] + " " + line[header.end() :])
    done = subprocess.run(
        [LOGNORMALIZER, "-r", str(rulebase), "-e", "json"],
        input="\n".join(given) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = []
    for text in done.stdout.splitlines():
        parsed = json.loads(text)
        assert "cef" in parsed, f"liblognorm did not read a CEF line: {text[:300]}"
        out.append(parsed["cef"])
    assert len(out) == len(lines)
    return out
