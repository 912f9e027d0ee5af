"""The engine's own decoder graph: the exported one, with logits computed at one position per row.

The exported graph (which onnxruntime-genai also runs) computes logits for every input position.
Generation only ever samples from each row's last prompt position, so during prefill the
language-model head, the graph's widest matrix (49,152 outputs per position), did work that was
thrown away: about a fifth of a prefill. The derived graph takes one more input, `last_index`
(`[batch]`, int64: the position within this call's input whose logits are wanted; 0 for a decode
step) and gathers that position's hidden state before the head, so `logits` is `[batch, 1, vocab]`.
Every other node, and every weight, is shared: the new file points at the same external data file.
The logits it returns are the very values the full graph computes at that position.

Written at export time (the `onnx` package is an export tool); the engine only reads the result.
"""

from __future__ import annotations

from pathlib import Path

LAST_POSITION_GRAPH = "model.last-position.onnx"
LAST_INDEX = "last_index"
LOGITS = "logits"


def write_last_position_graph(folder: Path, source: str = "model.onnx") -> Path:
    """Writes `LAST_POSITION_GRAPH` beside `source` in `folder` and returns its path."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(folder / source), load_external_data=False)
    graph = model.graph
    (head,) = [n for n in graph.node if LOGITS in n.output]
    hidden = head.input[0]  # [batch, seq, hidden]

    def const(name: str, values: list[int]) -> onnx.NodeProto:
        tensor = helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        return helper.make_node("Constant", [], [name], value=tensor)

    p = "/last_position/"
    nodes = [
        const(p + "axes", [1, 2]),
        const(p + "zero", [0]),
        const(p + "one", [1]),
        const(p + "two", [2]),
        const(p + "three", [3]),
        helper.make_node("Unsqueeze", [LAST_INDEX, p + "axes"], [p + "index_3d"]),
        helper.make_node("Shape", [hidden], [p + "shape"]),
        helper.make_node("Slice", [p + "shape", p + "zero", p + "one"], [p + "batch"]),
        helper.make_node("Slice", [p + "shape", p + "two", p + "three"], [p + "width"]),
        helper.make_node("Concat", [p + "batch", p + "one", p + "width"], [p + "target"], axis=0),
        helper.make_node("Expand", [p + "index_3d", p + "target"], [p + "index"]),
        # [batch, 1, hidden]: each row's hidden state at its own index.
        helper.make_node("GatherElements", [hidden, p + "index"], [p + "hidden"], axis=1),
    ]
    at = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    head.input[0] = p + "hidden"
    graph.input.append(helper.make_tensor_value_info(LAST_INDEX, TensorProto.INT64, ["batch_size"]))
    for out in graph.output:
        if out.name == LOGITS:
            # The declared shape: one position per row.
            dims = out.type.tensor_type.shape.dim
            dims[1].ClearField("dim_param")
            dims[1].dim_value = 1
    target = folder / LAST_POSITION_GRAPH
    # Initializers keep their external-data references: the weights file is shared, not copied.
    onnx.save(model, str(target))
    return target
