"""Exact rewrites of a float TFLite model that let a quantizer make every op integer.

ai-edge-quantizer has no integer kernel for some ops the TFLite converter emits for XCiT, and leaves
them in float: an NPU / Edge TPU then hands the whole graph back to the CPU at each of them. Each
rewrite here computes the same float values as the op it replaces (checked by `verify`):

* `NEG x` -> `MUL x, -1` (Keras' LayerNormalization negates its mean; negation by a multiply by -1 is
  exact in IEEE float, and MUL has an int8 kernel);
* `SQUARED_DIFFERENCE a, b` -> `d = SUB a, b; MUL d, d` (what the float kernel computes; the
  quantizer has no int16 SQUARED_DIFFERENCE, the LayerNorm variance's op);
* `ZEROS_LIKE x` where `x` has a static shape (batch 1) -> a zeros constant, and any ADD / MUL whose
  inputs are then all constants -> its value (the class token broadcast over the batch: a
  data-independent value the converter kept as ops);
* ops left without a consumer are removed (the STRIDED_SLICE feeding that ZEROS_LIKE), and tensors
  nothing refers to any more (ai-edge-quantizer's calibrator reads every tensor, and an orphan has no
  data).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _fb():
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    return fb, flatbuffer_utils


class _Model:
    """The object form of a flatbuffer model and helpers over its first subgraph."""

    def __init__(self, data: bytes):
        self.fb, self.fu = _fb()
        self.model = self.fu.read_model_from_bytearray(bytearray(data))
        self.sub = self.model.subgraphs[0]

    def code(self, op) -> int:
        c = self.model.operatorCodes[op.opcodeIndex]
        return max(int(c.builtinCode), int(c.deprecatedBuiltinCode))

    def opcode(self, builtin: int) -> int:
        for i, c in enumerate(self.model.operatorCodes):
            if max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) == builtin:
                return i
        self.model.operatorCodes.append(self.fb.OperatorCodeT(deprecatedBuiltinCode=min(builtin, 127), version=1,
                                                              builtinCode=builtin))
        return len(self.model.operatorCodes) - 1

    def buffer(self, value: np.ndarray) -> int:
        """A new buffer holding `value` as float32; returns its index."""
        data = np.ascontiguousarray(value, dtype=np.float32).tobytes()
        self.model.buffers.append(self.fb.BufferT(data=np.frombuffer(data, np.uint8)))
        return len(self.model.buffers) - 1

    def constant(self, name: str, value: np.ndarray) -> int:
        """A new float32 constant tensor; returns its index."""
        self.sub.tensors.append(self.fb.TensorT(shape=list(np.shape(value)), type=self.fb.TensorType.FLOAT32,
                                                buffer=self.buffer(value), name=name))
        return len(self.sub.tensors) - 1

    def value(self, index: int) -> np.ndarray | None:
        """A float32 constant tensor's value, None for anything else."""
        t = self.sub.tensors[index]
        data = self.model.buffers[t.buffer].data if t.buffer else None
        if data is None or not len(data) or t.type != self.fb.TensorType.FLOAT32:
            return None
        return np.frombuffer(bytes(bytearray(data)), np.float32).reshape(list(t.shape))

    def make_constant(self, index: int, value: np.ndarray) -> None:
        """Turn tensor `index` (an op's output) into a constant holding `value`."""
        self.sub.tensors[index].buffer = self.buffer(value)

    def bytes(self) -> bytes:
        return bytes(self.fu.convert_object_to_bytearray(self.model))


class OpGraph:
    """Producers and consumers of the first subgraph's tensors, op names by index (a snapshot: rebuild it
    after changing the ops)."""

    def __init__(self, m: _Model):
        self.m = m
        names = {v: k for k, v in vars(m.fb.BuiltinOperator).items() if not k.startswith("_")}
        self.ops = m.sub.operators
        self.kind = [names.get(m.code(op), "?") for op in self.ops]
        self.producer: dict[int, int] = {}
        self.consumers: dict[int, list[int]] = {}
        for i, op in enumerate(self.ops):
            for o in op.outputs:
                self.producer[int(o)] = i
            for t in op.inputs:
                self.consumers.setdefault(int(t), []).append(i)

    def made_by(self, tensor: int, kind: str) -> int | None:
        i = self.producer.get(tensor)
        return i if i is not None and self.kind[i] == kind else None

    def channels(self, tensor: int) -> int:
        shape = self.m.sub.tensors[tensor].shape
        return int(shape[-1]) if shape is not None and len(shape) else -1


def _negations_to_multiplies(m: _Model) -> int:
    neg, mul = m.fb.BuiltinOperator.NEG, m.fb.BuiltinOperator.MUL
    minus_one = None
    count = 0
    for op in m.sub.operators:
        if m.code(op) != neg:
            continue
        if minus_one is None:
            minus_one = m.constant("xcit_edge/minus_one", np.float32(-1.0))
        op.opcodeIndex = m.opcode(mul)
        op.inputs = [int(op.inputs[0]), minus_one]
        op.builtinOptionsType = m.fb.BuiltinOptions.MulOptions
        op.builtinOptions = m.fb.MulOptionsT()
        count += 1
    return count


def _squared_differences_to_sub_mul(m: _Model) -> int:
    bo = m.fb.BuiltinOperator
    ops, count = [], 0
    for op in m.sub.operators:
        if m.code(op) != bo.SQUARED_DIFFERENCE:
            ops.append(op)
            continue
        out = m.sub.tensors[int(op.outputs[0])]
        m.sub.tensors.append(m.fb.TensorT(shape=list(out.shape), type=out.type, name=f"{out.name}/difference",
                                          shapeSignature=out.shapeSignature))
        diff = len(m.sub.tensors) - 1
        ops.append(m.fb.OperatorT(opcodeIndex=m.opcode(bo.SUB), inputs=[int(i) for i in op.inputs], outputs=[diff],
                                  builtinOptionsType=m.fb.BuiltinOptions.SubOptions, builtinOptions=m.fb.SubOptionsT()))
        ops.append(m.fb.OperatorT(opcodeIndex=m.opcode(bo.MUL), inputs=[diff, diff], outputs=[int(op.outputs[0])],
                                  builtinOptionsType=m.fb.BuiltinOptions.MulOptions, builtinOptions=m.fb.MulOptionsT()))
        count += 1
    m.sub.operators = ops
    return count


def _fold_constants(m: _Model) -> int:
    """ZEROS_LIKE of a static shape, then ADD / MUL of constants (no fused activation), to constants."""
    bo = m.fb.BuiltinOperator
    arith = {bo.ADD: np.add, bo.MUL: np.multiply}
    kept, count = [], 0
    for op in m.sub.operators:
        code, out = m.code(op), int(op.outputs[0])
        value = None
        if code == bo.ZEROS_LIKE:
            shape = m.sub.tensors[int(op.inputs[0])].shape
            if shape is not None and len(shape) and all(int(s) > 0 for s in shape):
                value = np.zeros([int(s) for s in shape], np.float32)
        elif code in arith and not getattr(op.builtinOptions, "fusedActivationFunction", 0):
            args = [m.value(int(i)) for i in op.inputs]
            if all(a is not None for a in args):
                value = arith[code](*args).astype(np.float32)
        if value is not None and list(value.shape) == [int(s) for s in m.sub.tensors[out].shape]:
            m.make_constant(out, value)
            count += 1
        else:
            kept.append(op)
    m.sub.operators = kept
    return count


def _remove_dead_ops(m: _Model) -> int:
    removed = 0
    while True:
        used = {int(i) for op in m.sub.operators for i in op.inputs if int(i) >= 0} | {int(o) for o in m.sub.outputs}
        alive = [op for op in m.sub.operators if any(int(o) in used for o in op.outputs)]
        if len(alive) == len(m.sub.operators):
            return removed
        removed += len(m.sub.operators) - len(alive)
        m.sub.operators = alive


def _drop_orphan_tensors(m: _Model) -> None:
    sub = m.sub
    refs = {int(i) for op in sub.operators for i in [*op.inputs, *op.outputs,
                                                     *(op.intermediates if op.intermediates is not None else [])]}
    refs |= {int(i) for i in [*sub.inputs, *sub.outputs]}
    keep = sorted(i for i in refs if i >= 0)
    new = {old: k for k, old in enumerate(keep)}

    def remap(xs):
        return None if xs is None else [new[int(i)] if int(i) >= 0 else int(i) for i in xs]

    for op in sub.operators:
        op.inputs, op.outputs, op.intermediates = remap(op.inputs), remap(op.outputs), remap(op.intermediates)
    sub.inputs, sub.outputs = remap(sub.inputs), remap(sub.outputs)
    sub.tensors = [sub.tensors[i] for i in keep]
    for sig in m.model.signatureDefs or []:
        for t in [*(sig.inputs or []), *(sig.outputs or [])]:
            t.tensorIndex = new[int(t.tensorIndex)]


def _drop_unused_buffers(m: _Model) -> None:
    """Remove buffers no tensor or metadata entry refers to (a rewrite that replaces a constant leaves the old
    one's data behind), keeping buffer 0, the schema's empty sentinel."""
    model = m.model
    tensors = [t for sub in model.subgraphs for t in sub.tensors]
    used = {0} | {int(t.buffer) for t in tensors} | {int(md.buffer) for md in model.metadata or []}
    keep = sorted(used)
    new = {old: k for k, old in enumerate(keep)}
    model.buffers = [model.buffers[i] for i in keep]
    for t in tensors:
        t.buffer = new[int(t.buffer)]
    for md in model.metadata or []:
        md.buffer = new[int(md.buffer)]


def compact(m: _Model) -> None:
    """Drop the tensors and buffers nothing refers to any more."""
    _drop_orphan_tensors(m)
    _drop_unused_buffers(m)


def integer_friendly(data: bytes) -> tuple[bytes, dict]:
    """The float model with the module's rewrites applied, and how many of each were made."""
    m = _Model(data)
    made = {"neg_to_mul": _negations_to_multiplies(m),
            "squared_difference_to_sub_mul": _squared_differences_to_sub_mul(m), "folded_constants": _fold_constants(m),
            "dead_ops_removed": _remove_dead_ops(m)}
    compact(m)
    log.debug("integer-friendly rewrites: %s", made)
    return m.bytes(), made


def verify(before: bytes, after: bytes, seed: int = 0) -> float:
    """The largest absolute difference between the two float models' outputs for one seeded input in
    the model's own input contract (builtin kernels): a rewrite here is exact, so anything above float
    rounding is a bug."""
    return compare(before, after, seed)[0]


def compare(before: bytes, after: bytes, seed: int = 0) -> tuple[float, float]:
    """(largest absolute difference of the two models' outputs, largest absolute output of `before`) for one
    seeded input in the model's own input contract, on LiteRT's builtin kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    outs, x = [], None
    for data in (before, after):
        interp = Interpreter(model_content=data,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        if x is None:
            rng = np.random.default_rng(seed)
            x = (rng.integers(0, 256, inp["shape"]) if np.issubdtype(inp["dtype"], np.integer)
                 else rng.standard_normal(inp["shape"])).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]).astype(np.float64))
    return float(np.max(np.abs(outs[0] - outs[1]))), float(np.max(np.abs(outs[0])))
