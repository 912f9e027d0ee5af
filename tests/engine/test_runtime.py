"""The runtime's slot-to-slot KV copy: a copied prefill decodes exactly like the original."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.engine.runtime import DecoderRuntime
from services.engine.text import TextCodec


def test_a_copied_prefill_decodes_like_the_original(model_folder: Path) -> None:
    codec = TextCodec.from_folder(model_folder)
    rt = DecoderRuntime(model_folder, max_batch=4, max_len=256)
    prompt = np.asarray(codec.encode(codec.render_chat([("user", "Name three colors.")])))
    # Slot 2 holds something else first: the copy must overwrite it.
    rt.prefill(2, [np.asarray(codec.encode("unrelated text in the way"))])
    first = rt.prefill(0, [prompt])[0].copy()
    rt.copy_slot(0, 2, len(prompt))
    token = int(np.argmax(first))
    lengths = np.array([len(prompt), 0, len(prompt)])
    for _ in range(8):
        logits = rt.decode(np.array([token, 0, token]), lengths)
        assert np.array_equal(logits[0], logits[2])
        token = int(np.argmax(logits[0]))
        lengths += np.array([1, 0, 1])
