"""The README's configuration tables name every setting a service reads."""

from __future__ import annotations

import re
from pathlib import Path

from services.common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `SLUICE_")]
    documented = " ".join(table)
    missing = [
        f"SLUICE_{name.upper()}"
        for name in Settings.model_fields
        if f"`SLUICE_{name.upper()}`" not in documented
    ]
    assert not missing, f"add these to the README's configuration table: {missing}"


def test_every_otel_variable_the_services_read_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    read = set(
        re.findall(r"OTEL_[A-Z_]*[A-Z]\b", (ROOT / "services/common/tracing.py").read_text())
    )
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in read
    table = " ".join(line for line in readme.splitlines() if line.startswith("| `OTEL_"))
    missing = sorted(name for name in read if f"`{name}`" not in table)
    assert not missing, f"add these to the README's traces table: {missing}"
