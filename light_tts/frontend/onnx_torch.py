"""An ONNX graph run with torch ops on any device: the released prompt models on the GPU, no ONNX Runtime.

The speech tokenizer and the speaker model ship as ONNX files only (`speech_tokenizer_v2.onnx`, `campplus.onnx`).
`TorchGraph` reads a file with the `onnx` package (nodes, attributes, initializers), keeps the initializers as
tensors on the device and evaluates the nodes in their (topological) order with the torch op of each ONNX op
(`onnx_ops.OPS`). Whatever the graph computes, it computes: no architecture is re-derived by hand, so the same
code serves the released files and the small stand-ins of `tools/make_onnx.py`.

Shape arithmetic stays on the host: integer initializers and constants, and Shape's output, are CPU tensors, and
integer ops on CPU tensors stay there, so a Reshape or Slice never syncs the device for its arguments; float
data lives on the device. A graph with an op this module does not know fails at load (UnsupportedGraph names
them), and the frontend keeps ONNX Runtime for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from light_tts.errors import ModelDirError
from light_tts.frontend.onnx_ops import OPS, Node, to_device


class UnsupportedGraph(Exception):
    """The graph uses an op (or an attribute form) that TorchGraph does not implement."""


class TorchGraph(torch.nn.Module):
    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        path, self.device = Path(path), torch.device(device)
        try:
            model = onnx.load(str(path))
        except Exception as e:  # a missing or corrupt file
            raise ModelDirError(f"cannot load ONNX model {path}: {e}") from e
        graph = model.graph
        self.values: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            self.values[init.name] = self._const(numpy_helper.to_array(init))
        self.input_names = [i.name for i in graph.input if i.name not in self.values]
        self.output_names = [o.name for o in graph.output]
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.nodes = [Node(n.op_type, list(n.input), list(n.output), _attributes(n), opset) for n in graph.node]
        foreign = sorted({n.domain for n in graph.node if n.domain not in ("", "ai.onnx")})
        if foreign:
            raise UnsupportedGraph(f"{path.name} uses ops of other domains: {', '.join(foreign)}")
        missing = sorted({n.op for n in self.nodes if n.op not in OPS})
        if missing:
            raise UnsupportedGraph(f"{path.name} uses ONNX ops this runner lacks: {', '.join(missing)}")
        self.name = path.name

    def _const(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(array, copy=True))
        return to_device(tensor, self.device)

    @torch.inference_mode()
    def forward(self, *inputs: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """The graph's outputs for `inputs` (in the graph's input order; numpy arrays are converted)."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.name} takes {len(self.input_names)} inputs, got {len(inputs)}")
        env = dict(self.values)
        for name, value in zip(self.input_names, inputs):
            tensor = torch.as_tensor(value)
            env[name] = to_device(tensor, self.device)
        for node in self.nodes:
            args = [env[name] if name else None for name in node.inputs]
            try:
                results = OPS[node.op](node, *args)
            except UnsupportedGraph:
                raise
            except Exception as e:
                raise RuntimeError(f"{self.name}: {node.op} node {node.outputs} failed: {e}") from e
            if isinstance(results, torch.Tensor):
                results = (results,)
            for name, value in zip(node.outputs, results):
                if name:
                    env[name] = value
        return [env[name] for name in self.output_names]


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif hasattr(value, "data_type"):  # a TensorProto (Constant's value)
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out
