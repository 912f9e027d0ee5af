"""The engine's last-position graph returns exactly the logits the exported graph computes there."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from services.engine.graph import LAST_POSITION_GRAPH
from services.engine.runtime import DecoderRuntime

PROMPTS = [[1, 9690, 198, 2683, 314, 253], [1, 4093, 198], [1, 22, 33, 44, 55, 66, 77, 88, 99]]


@pytest.fixture(scope="module")
def full_graph_folder(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same export without the derived graph: the runtime falls back to model.onnx.

    Copied, not linked: ONNX Runtime refuses weights reached through a link out of the folder."""
    folder = tmp_path_factory.mktemp("full") / "cpu-int4"
    shutil.copytree(model_folder, folder, ignore=shutil.ignore_patterns(LAST_POSITION_GRAPH))
    return folder


def _runtime(folder: Path) -> DecoderRuntime:
    return DecoderRuntime(folder, max_batch=4, max_len=64, threads=1)


def test_export_writes_the_last_position_graph(model_folder: Path) -> None:
    assert (model_folder / LAST_POSITION_GRAPH).is_file()
    assert _runtime(model_folder).last_position


def test_prefill_and_decode_logits_equal_the_full_graph(
    model_folder: Path, full_graph_folder: Path
) -> None:
    ours, full = _runtime(model_folder), _runtime(full_graph_folder)
    assert not full.last_position
    prompts = [np.asarray(p, dtype=np.int64) for p in PROMPTS]
    # Right-padded rows of different lengths: each row's own last position.
    a, b = ours.prefill(0, prompts), full.prefill(0, prompts)
    assert a.shape == b.shape == (3, ours.spec.vocab_size)
    np.testing.assert_array_equal(a, b)
    # A chunk continuing a prompt already in slot 3.
    head, tail = np.asarray(PROMPTS[2][:4]), np.asarray(PROMPTS[2][4:])
    for rt in (ours, full):
        rt.prefill(3, [head])
    np.testing.assert_array_equal(ours.prefill(3, [tail], past=4), full.prefill(3, [tail], past=4))
    # One decode step over all four slots, rows of different lengths.
    tokens = np.array([a[i].argmax() for i in range(3)] + [7], dtype=np.int64)
    lengths = np.array([len(p) for p in PROMPTS], dtype=np.int64)
    lengths = np.append(lengths, len(PROMPTS[2]))
    np.testing.assert_array_equal(ours.decode(tokens, lengths), full.decode(tokens, lengths))
