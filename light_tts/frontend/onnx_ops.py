"""The ONNX ops TorchGraph knows (onnx_torch.py), each as the torch op of the same semantics (opset 11-18).

OPS maps an op type to fn(node, *inputs) -> tensor or tuple of tensors; an optional input that the graph leaves
empty arrives as None. Integer and bool tensors that no device op produced live on the host (shapes, axes,
lengths), float data on the graph's device; `_align` moves host operands to the device where they meet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# TensorProto data types -> torch dtypes (Cast, ConstantOfShape)
DTYPES = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int = 17  # of the default domain: a few ops changed meaning (Softmax's axis at 13)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float data to the device; integers and bools stay on the host (they are shapes, axes or lengths)."""
    return tensor.to(device) if tensor.is_floating_point() else tensor


def _align(*tensors: torch.Tensor | None) -> list[Any]:
    device = next((t.device for t in tensors if t is not None and t.device.type != "cpu"), None)
    if device is None:
        return list(tensors)
    return [t.to(device) if t is not None and t.device != device else t for t in tensors]


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _binary(fn: Callable) -> Callable:
    return lambda node, a, b: fn(*_align(a, b))


def _unary(fn: Callable) -> Callable:
    return lambda node, x: fn(x)


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = _align(a, b)
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # integer Div truncates, as in C


def _variadic(fn: Callable) -> Callable:
    def run(node: Node, *xs: torch.Tensor) -> torch.Tensor:
        xs = _align(*xs)
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


def _reduce(fn: Callable) -> Callable:
    def run(node: Node, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        dims = node.attrs.get("axes") if axes is None else _ints(axes)
        keep = bool(node.attrs.get("keepdims", 1))
        if not dims:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        return fn(x, [_axis(d, x.dim()) for d in dims], keep)

    return run


def _reduce_max(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.amax(x, dim=dims, keepdim=keep)


def _reduce_min(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.amin(x, dim=dims, keepdim=keep)


def _reduce_prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _reshape(node: Node, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = _ints(shape)
    if not node.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _unsqueeze(node: Node, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    dims = node.attrs.get("axes") if axes is None else _ints(axes)
    rank = x.dim() + len(dims)
    for d in sorted(_axis(d, rank) for d in dims):
        x = x.unsqueeze(d)
    return x


def _squeeze(node: Node, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    dims = node.attrs.get("axes") if axes is None else _ints(axes)
    if not dims:
        return x.squeeze()
    for d in sorted((_axis(d, x.dim()) for d in dims), reverse=True):
        x = x.squeeze(d)
    return x


def _slice(
    node: Node,
    x: torch.Tensor,
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    if starts is None:  # opset < 10: attributes
        s, e, a, st = node.attrs["starts"], node.attrs["ends"], node.attrs.get("axes"), None
    else:
        s, e, a, st = _ints(starts), _ints(ends), _ints(axes) or None, _ints(steps) or None
    a = a or list(range(len(s)))
    st = st or [1] * len(s)
    for start, end, axis, step in zip(s, e, a, st):
        axis, dim = _axis(axis, x.dim()), x.shape[_axis(axis, x.dim())]
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            x = (
                x.narrow(axis, start, max(0, end - start))[(slice(None),) * axis + (slice(None, None, step),)]
                if step > 1
                else x.narrow(axis, start, max(0, end - start))
            )
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            index = torch.arange(start, end, step, device=x.device)
            x = x.index_select(axis, index)
    return x


def _gather(node: Node, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    axis = _axis(node.attrs.get("axis", 0), x.dim())
    x, index = _align(x, index)
    index = torch.where(index < 0, index + x.shape[axis], index).long()
    out = x.index_select(axis, index.reshape(-1))
    return out.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1 :]))


def _gather_elements(node: Node, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    axis = _axis(node.attrs.get("axis", 0), x.dim())
    x, index = _align(x, index)
    return torch.gather(x, axis, torch.where(index < 0, index + x.shape[axis], index).long())


def _expand(node: Node, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    target = list(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))
    return x.reshape([1] * (len(target) - x.dim()) + list(x.shape)).expand(target)


def _split(node: Node, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    axis = _axis(node.attrs.get("axis", 0), x.dim())
    sizes = _ints(split) if split is not None else node.attrs.get("split")
    if not sizes:
        parts = node.attrs.get("num_outputs") or len(node.outputs)
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - size * i) for i in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


def _constant(node: Node) -> torch.Tensor:
    a = node.attrs
    if "value" in a:
        value = torch.from_numpy(a["value"].copy())
    elif "value_float" in a:
        value = torch.tensor(a["value_float"], dtype=torch.float32)
    elif "value_floats" in a:
        value = torch.tensor(a["value_floats"], dtype=torch.float32)
    elif "value_int" in a:
        value = torch.tensor(a["value_int"], dtype=torch.int64)
    else:
        value = torch.tensor(a["value_ints"], dtype=torch.int64)
    return value


def _constant_of_shape(node: Node, shape: torch.Tensor) -> torch.Tensor:
    value = node.attrs.get("value")
    fill = torch.from_numpy(value.copy()).reshape(()) if value is not None else torch.tensor(0.0)
    return torch.full(_ints(shape), fill.item(), dtype=fill.dtype)


def _range(node: Node, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _pad(
    node: Node,
    x: torch.Tensor,
    pads: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
) -> torch.Tensor:
    p = node.attrs.get("pads") if pads is None else _ints(pads)
    dims = [_axis(a, x.dim()) for a in _ints(axes)] if axes is not None else list(range(x.dim()))
    begin, end = dict(zip(dims, p[: len(dims)])), dict(zip(dims, p[len(dims) :]))
    torch_pads = []
    for d in reversed(range(x.dim())):
        torch_pads += [begin.get(d, 0), end.get(d, 0)]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[node.attrs.get("mode", "constant")]
    if mode != "constant":  # torch pads the last dims only there: drop the untouched leading ones
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        return F.pad(x, torch_pads, mode=mode)
    fill = 0.0 if value is None else value.item()
    return F.pad(x, torch_pads, value=fill)


def _conv(node: Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    a, nd = node.attrs, w.dim() - 2
    strides, dilations = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
    pads = list(a.get("pads", [0] * 2 * nd))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * nd
        for i in range(nd):
            size, k = x.shape[2 + i], (w.shape[2 + i] - 1) * dilations[i] + 1
            total = max(0, (math.ceil(size / strides[i]) - 1) * strides[i] + k - size)
            small = total // 2
            pads[i], pads[nd + i] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
    if pads[:nd] != pads[nd:]:
        torch_pads = []
        for i in reversed(range(nd)):
            torch_pads += [pads[i], pads[nd + i]]
        x, pads = F.pad(x, torch_pads), [0] * 2 * nd
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return conv(x, w, b, stride=strides, padding=pads[:nd], dilation=dilations, groups=a.get("group", 1))


def _pool(node: Node, x: torch.Tensor, is_max: bool) -> torch.Tensor:
    a = node.attrs
    kernel = a["kernel_shape"]
    nd = len(kernel)
    strides, pads = a.get("strides", [1] * nd), list(a.get("pads", [0] * 2 * nd))
    if pads[:nd] != pads[nd:]:
        torch_pads = []
        for i in reversed(range(nd)):
            torch_pads += [pads[i], pads[nd + i]]
        x, pads = F.pad(x, torch_pads, value=-math.inf if is_max else 0.0), [0] * 2 * nd
    ceil = bool(a.get("ceil_mode", 0))
    if is_max:
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        return pool(x, kernel, strides, pads[:nd], dilation=a.get("dilations", [1] * nd), ceil_mode=ceil)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    return pool(x, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))


def _softmax(fn: Callable) -> Callable:
    def run(node: Node, x: torch.Tensor) -> torch.Tensor:
        if node.opset < 13:  # over all dims from `axis` on, taken as one (default 1)
            axis = _axis(node.attrs.get("axis", 1), x.dim())
            return fn(x.reshape((*x.shape[:axis], -1)), dim=axis).reshape(x.shape)
        return fn(x, dim=_axis(node.attrs.get("axis", -1), x.dim()))

    return run


def _layer_norm(node: Node, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    axis = _axis(node.attrs.get("axis", -1), x.dim())
    shape = tuple(x.shape[axis:])
    x, scale, bias = _align(x, scale, bias)
    if tuple(scale.shape) != shape:
        scale = scale.expand(shape)
        bias = bias.expand(shape) if bias is not None else None
    return F.layer_norm(x, shape, scale, bias, node.attrs.get("epsilon", 1e-5))


def _batch_norm(node: Node, x, scale, bias, mean, var) -> torch.Tensor:
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=node.attrs.get("epsilon", 1e-5))


def _instance_norm(node: Node, x, scale, bias) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attrs.get("epsilon", 1e-5))


def _gemm(node: Node, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    at = node.attrs
    a = a.t() if at.get("transA", 0) else a
    b = b.t() if at.get("transB", 0) else b
    out = at.get("alpha", 1.0) * (a @ b)
    return out if c is None else out + at.get("beta", 1.0) * c


def _clip(node: Node, x: torch.Tensor, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None):
    lo_v = node.attrs.get("min") if lo is None else lo.item()
    hi_v = node.attrs.get("max") if hi is None else hi.item()
    return torch.clamp(x, lo_v, hi_v)


def _cast(node: Node, x: torch.Tensor) -> torch.Tensor:
    dtype = DTYPES[node.attrs["to"]]
    if x.is_floating_point() and not dtype.is_floating_point and dtype != torch.bool:
        return torch.trunc(x).to(dtype)
    return x.to(dtype)


def _argmax(fn: Callable) -> Callable:
    def run(node: Node, x: torch.Tensor) -> torch.Tensor:
        axis, keep = _axis(node.attrs.get("axis", 0), x.dim()), bool(node.attrs.get("keepdims", 1))
        if node.attrs.get("select_last_index", 0):
            return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)

    return run


def _cumsum(node: Node, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    dim = _axis(int(axis.item()), x.dim())
    if node.attrs.get("reverse", 0):
        x = x.flip(dim)
    out = torch.cumsum(x, dim)
    if node.attrs.get("exclusive", 0):
        out = out - x
    return out.flip(dim) if node.attrs.get("reverse", 0) else out


def _where(node: Node, cond, x, y) -> torch.Tensor:
    cond, x, y = _align(cond, x, y)
    return torch.where(cond, x, y)


def _shape(node: Node, x: torch.Tensor) -> torch.Tensor:
    dims = list(x.shape)[node.attrs.get("start", 0) : node.attrs.get("end")]
    return torch.tensor(dims, dtype=torch.int64)


def _concat(node: Node, *xs: torch.Tensor) -> torch.Tensor:
    xs = [x for x in _align(*xs) if x is not None]
    return torch.cat(xs, dim=node.attrs["axis"])


OPS: dict[str, Callable[..., Any]] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": lambda n, a, b: _div(a, b),
    "Pow": lambda n, a, b: torch.pow(*_align(a, b)).to(a.dtype),
    "Mod": _binary(torch.fmod),
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le),
    "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Mean": lambda n, *xs: _variadic(torch.add)(n, *xs) / len(xs),
    "PRelu": _binary(lambda x, s: torch.where(x >= 0, x, x * s)),
    "Sqrt": _unary(torch.sqrt),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Tanh": _unary(torch.tanh),
    "Sigmoid": _unary(torch.sigmoid),
    "Relu": _unary(torch.relu),
    "Erf": _unary(torch.erf),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),
    "Sign": _unary(torch.sign),
    "Not": _unary(torch.logical_not),
    "IsNaN": _unary(torch.isnan),
    "Softplus": _unary(F.softplus),
    "Identity": _unary(lambda x: x),
    "LeakyRelu": lambda n, x: F.leaky_relu(x, n.attrs.get("alpha", 0.01)),
    "Elu": lambda n, x: F.elu(x, n.attrs.get("alpha", 1.0)),
    "HardSigmoid": lambda n, x: torch.clamp(n.attrs.get("alpha", 0.2) * x + n.attrs.get("beta", 0.5), 0, 1),
    "Gelu": lambda n, x: F.gelu(x, approximate=n.attrs.get("approximate", "none")),
    "Clip": _clip,
    "Cast": _cast,
    "CastLike": lambda n, x, like: x.to(like.dtype),
    "Where": _where,
    "Shape": _shape,
    "Size": lambda n, x: torch.tensor(x.numel(), dtype=torch.int64),
    "Reshape": _reshape,
    "Flatten": lambda n, x: x.reshape(math.prod(x.shape[: _axis(n.attrs.get("axis", 1), x.dim())]), -1),
    "Transpose": lambda n, x: x.permute(n.attrs.get("perm") or list(reversed(range(x.dim())))),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "Expand": _expand,
    "Tile": lambda n, x, r: x.repeat(_ints(r)),
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Pad": _pad,
    "Trilu": lambda n, x, k=None: (torch.triu if n.attrs.get("upper", 1) else torch.tril)(
        x, int(k.item()) if k is not None else 0
    ),
    "ReduceMean": _reduce(lambda x, d, k: torch.mean(x, dim=d, keepdim=k)),
    "ReduceSum": _reduce(lambda x, d, k: torch.sum(x, dim=d, keepdim=k)),
    "ReduceSumSquare": _reduce(lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k)),
    "ReduceL2": _reduce(lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k))),
    "ReduceMax": _reduce(_reduce_max),
    "ReduceMin": _reduce(_reduce_min),
    "ReduceProd": _reduce(_reduce_prod),
    "ArgMax": _argmax(torch.argmax),
    "ArgMin": _argmax(torch.argmin),
    "CumSum": _cumsum,
    "MatMul": _binary(torch.matmul),
    "Gemm": _gemm,
    "Einsum": lambda n, *xs: torch.einsum(n.attrs["equation"], *_align(*xs)),
    "Conv": _conv,
    "AveragePool": lambda n, x: _pool(n, x, False),
    "MaxPool": lambda n, x: _pool(n, x, True),
    "GlobalAveragePool": lambda n, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda n, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax),
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "Dropout": lambda n, x, *rest: x,
}
