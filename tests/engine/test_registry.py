from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import NotFound
from services.engine.registry import ModelRegistry, choose_variant, load_entry


def test_resolves_name_alias_and_pin(model_folder: Path) -> None:
    entry = load_entry(model_folder)
    reg = ModelRegistry([entry])
    assert reg.resolve("smollm2-135m-instruct") is entry
    assert reg.resolve("smollm2") is entry
    assert reg.resolve(f"smollm2-135m-instruct@{entry.digest}") is entry
    assert entry.context_length == 8192


def test_unknown_model_and_wrong_pin_are_not_found(model_folder: Path) -> None:
    reg = ModelRegistry([load_entry(model_folder)])
    with pytest.raises(NotFound) as err:
        reg.resolve("gpt-4")
    assert err.value.code == "model_not_found"
    with pytest.raises(NotFound):
        reg.resolve("smollm2-135m-instruct@sha256:" + "0" * 64)


def test_max_context_caps_the_model(model_folder: Path) -> None:
    assert load_entry(model_folder, max_context=1024).context_length == 1024


def test_tampered_files_are_refused(model_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cpu-int4"
    copy.mkdir()
    for f in model_folder.iterdir():
        if f.name != "model.onnx.data":
            (copy / f.name).write_bytes(f.read_bytes())
    (copy / "model.onnx.data").write_bytes(b"not the weights")
    with pytest.raises(RuntimeError, match="re-export"):
        load_entry(copy)


def test_variant_choice(model_folder: Path) -> None:
    root = model_folder.parent
    assert choose_variant(root, "auto", cuda_available=False) == "cpu-int4"
    assert choose_variant(root, "cpu-int4", cuda_available=False) == "cpu-int4"
    assert choose_variant(root / "missing", "auto", cuda_available=True) is None
