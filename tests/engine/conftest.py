"""The exported model folder, for engine tests that run the real graph."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_FOLDER = ROOT / "models" / "smollm2-135m-instruct" / "cpu-int4"


@pytest.fixture(scope="session")
def model_folder() -> Path:
    if not (MODEL_FOLDER / "manifest.json").exists():
        pytest.fail("no exported model: run `make model` first", pytrace=False)
    return MODEL_FOLDER
