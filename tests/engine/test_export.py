"""Tests for services/engine/export.py that run in milliseconds: no download, no model build."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from services.engine import export
from services.engine.export import (
    MANIFEST_NAME,
    MODEL_NAME,
    VARIANTS,
    compute_digest,
    export_model,
    read_manifest,
)
from services.engine.graph import LAST_POSITION_GRAPH

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPORT_TOOLS = ("torch", "transformers", "onnxruntime_genai", "onnx", "gguf")


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def write_manifest(folder: Path, variant: str = "cpu-int4", digest: str | None = None) -> None:
    manifest = {
        "name": MODEL_NAME,
        "variant": variant,
        "source": {"package": export.SOURCE_PACKAGE, "wheel_sha256": export.WHEEL_SHA256},
        "files": {},
        "digest": digest or compute_digest(folder),
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


SAMPLE = {
    "model.onnx": b"graph",
    "model.last-position.onnx": b"the engine's graph",
    "model.onnx.data": b"\x00\x01" * 1000,
    "genai_config.json": b"{}",
    "sub/chat_template.jinja": b"{{ messages }}",
}


def test_variants_table() -> None:
    assert dict(VARIANTS) == {
        "cpu-int4": ("cpu", "int4"),
        "cuda-fp16": ("cuda", "fp16"),
        "cuda-int4": ("cuda", "int4"),
    }
    with pytest.raises(TypeError):
        VARIANTS["cpu-fp32"] = ("cpu", "fp32")  # type: ignore[index]


def test_digest_is_stable_and_independent_of_creation_order(tmp_path: Path) -> None:
    first = make_folder(tmp_path / "a", SAMPLE)
    second = make_folder(tmp_path / "b", dict(reversed(list(SAMPLE.items()))))
    digest = compute_digest(first)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert compute_digest(first) == digest
    assert compute_digest(second) == digest


def test_digest_is_sha256sum_lines_sorted_by_path(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", SAMPLE)
    lines = "".join(
        f"{hashlib.sha256(SAMPLE[path]).hexdigest()}  {path}\n" for path in sorted(SAMPLE)
    )
    assert compute_digest(folder) == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        lambda folder: (folder / "model.onnx.data").write_bytes(b"\x00\x02" * 1000),
        lambda folder: (folder / "extra.txt").write_text("x"),
        lambda folder: (folder / "model.onnx").unlink(),
        lambda folder: (folder / "model.onnx").rename(folder / "renamed.onnx"),
    ],
    ids=["content", "added", "removed", "renamed"],
)
def test_digest_changes_when_files_change(tmp_path: Path, change: Callable[[Path], object]) -> None:
    folder = make_folder(tmp_path / "m", SAMPLE)
    before = compute_digest(folder)
    change(folder)
    assert compute_digest(folder) != before


def test_digest_leaves_out_the_manifest(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", SAMPLE)
    before = compute_digest(folder)
    write_manifest(folder)
    assert compute_digest(folder) == before


def test_read_manifest_from_folder_or_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", SAMPLE)
    write_manifest(folder)
    manifest = read_manifest(folder)
    assert manifest == read_manifest(folder / MANIFEST_NAME)
    assert manifest["name"] == MODEL_NAME
    assert manifest["digest"] == compute_digest(folder)


def test_read_manifest_rejects_what_is_not_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"name": MODEL_NAME}))
    with pytest.raises(ValueError, match="missing variant"):
        read_manifest(tmp_path)


def test_export_is_a_no_op_when_the_folder_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_folder(tmp_path / MODEL_NAME / "cpu-int4", SAMPLE)
    write_manifest(folder)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a verified export must not fetch or build anything")

    monkeypatch.setattr(export, "_fetch_wheel", must_not_run)
    assert export_model("cpu-int4", tmp_path) == folder
    assert f"already exported: {folder} (sha256:" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["a file changed", "no last-position graph"])
def test_export_does_not_trust_a_manifest_whose_files_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    files = dict(SAMPLE)
    if case == "no last-position graph":
        # Exported before the engine's graph existed: consistent with its manifest, yet rebuilt.
        del files[LAST_POSITION_GRAPH]
    folder = make_folder(tmp_path / MODEL_NAME / "cpu-int4", files)
    write_manifest(folder)
    if case == "a file changed":
        (folder / "model.onnx").write_bytes(b"tampered")
    before = (folder / "model.onnx").read_bytes()

    class Rebuilding(Exception):
        pass

    def rebuild(*args: object, **kwargs: object) -> None:
        raise Rebuilding

    monkeypatch.setattr(export, "_require_tools", lambda: None)
    monkeypatch.setattr(export, "_fetch_wheel", rebuild)
    with pytest.raises(Rebuilding):
        export_model("cpu-int4", tmp_path, progress=False)
    assert (folder / "model.onnx").read_bytes() == before  # left alone until a build succeeds


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cpu-int4"):
        export_model("tpu-int2", tmp_path)


def test_replace_dir_swaps_in_a_whole_folder(tmp_path: Path) -> None:
    target = make_folder(tmp_path / "v", {"old.txt": b"old"})
    staging = make_folder(tmp_path / ".v.partial-1", {"new.txt": b"new"})
    export._replace_dir(staging, target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["v"]
    assert [path.name for path in target.iterdir()] == ["new.txt"]


def test_importing_the_module_loads_no_export_tool() -> None:
    code = (
        "import json, sys\n"
        "import services.engine.export\n"
        f"print(json.dumps([name for name in {EXPORT_TOOLS!r} if name in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
