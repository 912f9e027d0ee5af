"""The README's configuration table names every setting a service reads."""

from __future__ import annotations

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
