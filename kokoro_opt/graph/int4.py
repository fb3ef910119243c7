"""Block-wise 4-bit weight quantization and the ONNX nodes that carry it.

Math (numpy only):
- `quantize_rtn`: round to nearest, per block of `block_size` values along one axis; symmetric
  (int4 in [-8, 7], the value of largest magnitude maps to -8 exactly, as in onnxruntime's
  MLAS) or asymmetric (uint4 in [0, 15] with an integer zero point per block).
- `quantize_hqq`: Half-Quadratic Quantization (Badri & Shaji, 2023), data-free: starting from
  RTN it refits each block's zero point to minimise an l_p (p < 1) error that ignores outliers,
  the same iteration onnxruntime ships (whose implementation needs torch, which this project
  does not use). Zero points stay float, or are rounded for formats that need integers.
- `gptq_blocks`: GPTQ (Frantar et al., 2022) on a weight [K, N] and the Hessian of its inputs:
  quantize one input row at a time and push the error onto the rows not yet quantized.

Carriers:
- `matmul_nbits`: com.microsoft MatMulNBits (weight [K, N], blocks along K).
- `dequantize_weight`: ONNX DequantizeLinear (opset 21) on an int4/uint4 initializer with
  block-wise (or per-channel) scales, feeding any float op (Conv, ConvTranspose, LSTM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT4_MIN, INT4_MAX = -8, 7
UINT4_MAX = 15


@dataclass
class BlockQuant:
    """A weight quantized in blocks of `block_size` along `axis`.

    `q` has the weight's shape (int8 holding int4 values for symmetric, uint8 holding uint4
    values otherwise); `scale` and `zero_point` have the weight's shape with `axis` replaced by
    the number of blocks. `zero_point` is None (symmetric), integer uint8, or float (HQQ).
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int
    block_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def dequantize(self) -> np.ndarray:
        """The float weight this quantization stands for."""
        d = self.q.shape[self.axis]
        scale = np.repeat(self.scale, self.block_size, axis=self.axis).take(
            np.arange(d), axis=self.axis
        )
        q = self.q.astype(np.float32)
        if self.zero_point is not None:
            zero = np.repeat(self.zero_point.astype(np.float32), self.block_size, axis=self.axis)
            q = q - zero.take(np.arange(d), axis=self.axis)
        return (q * scale).astype(np.float32)


def quantize_rtn(weight: np.ndarray, *, axis: int, block_size: int, symmetric: bool) -> BlockQuant:
    """Round-to-nearest 4-bit quantization in blocks along `axis` (the last block may be short)."""
    blocks, d = _to_blocks(weight, axis, block_size)
    if symmetric:
        scale = _symmetric_scale(blocks)
        q = np.clip(np.rint(blocks / scale[..., None]), INT4_MIN, INT4_MAX).astype(np.int8)
        zero = None
    else:
        lo = np.minimum(blocks.min(axis=-1), 0.0)
        hi = np.maximum(blocks.max(axis=-1), 0.0)
        scale = (hi - lo) / UINT4_MAX
        scale[scale == 0] = 1.0
        zero = np.clip(np.rint(-lo / scale), 0, UINT4_MAX)
        q = np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], 0, UINT4_MAX)
        q, zero = q.astype(np.uint8), zero.astype(np.uint8)
    return _from_blocks(q, scale, zero, weight, axis, block_size, d)


def quantize_hqq(
    weight: np.ndarray,
    *,
    axis: int,
    block_size: int,
    integer_zero: bool = False,
    iterations: int = 20,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> BlockQuant:
    """HQQ 4-bit quantization (asymmetric, uint4) in blocks along `axis`.

    Follows onnxruntime's `HQQWeightOnlyQuantizer` (same defaults: p = 0.7, beta = 10,
    kappa = 1.01, 20 iterations, stop when the mean absolute error stops falling). With
    `integer_zero` the fitted zero points are rounded to integers (DequantizeLinear needs them
    in the weight's type) and the weight is re-rounded on that grid.
    """
    blocks, d = _to_blocks(weight, axis, block_size)
    w = blocks.astype(np.float32)
    lo, hi = w.min(axis=-1, keepdims=True), w.max(axis=-1, keepdims=True)
    span = hi - lo
    span[span == 0] = UINT4_MAX
    inv_scale = np.minimum(UINT4_MAX / span, 2e4).astype(np.float32)
    zero = np.rint(-lo * inv_scale)
    best = np.inf
    for _ in range(iterations):
        wq = np.clip(np.rint(w * inv_scale + zero), 0, UINT4_MAX)
        wr = (wq - zero) / inv_scale
        err = w - wr
        shrunk = np.sign(err) * np.maximum(
            np.abs(err) - (1.0 / beta) * np.power(np.abs(err) + 1e-8, lp_norm - 1), 0.0
        )
        zero = np.mean(wq - (w - shrunk) * inv_scale, axis=-1, keepdims=True)
        beta *= kappa
        current = float(np.abs(err).mean())
        if current < best:
            best = current
        else:
            break
    scale = (1.0 / inv_scale)[..., 0]
    zero = zero[..., 0]
    if integer_zero:
        zero = np.clip(np.rint(zero), 0, UINT4_MAX)
    q = np.clip(np.rint(w * inv_scale + zero[..., None]), 0, UINT4_MAX).astype(np.uint8)
    zero_out = zero.astype(np.uint8) if integer_zero else zero.astype(np.float32)
    return _from_blocks(q, scale, zero_out, weight, axis, block_size, d)


def gptq_blocks(
    weight: np.ndarray,
    hessian: np.ndarray,
    *,
    block_size: int,
    symmetric: bool,
    damp: float = 0.01,
    columns: int = 128,
) -> BlockQuant:
    """GPTQ on `weight` [K, N] (inputs along K) with `hessian` [K, K] = 2/n * X^T X.

    Scales and zero points are fitted per block of `block_size` rows (RTN on the weights as they
    stand when the block's first row is reached, as in the GPTQ paper and onnxruntime's port).
    Rows are processed `columns` at a time with the lazy batch update. Returns the quantization
    along axis 0 (blocks of rows), ready for MatMulNBits or a DequantizeLinear on axis 0.

    The error of row i is spread with row i of U, the upper Cholesky factor of H^-1 (Frantar et
    al., Algorithm 1). onnxruntime's numpy port (`neural_compressor.weight_only.gptq`, 1.32)
    indexes the column of U instead, which is zero below the diagonal, so it returns exactly
    the RTN result; this implementation is the paper's update.
    """
    k, n = weight.shape
    columns = block_size * max(1, -(-columns // block_size))
    w = weight.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError:
        h[np.diag_indices(k)] += float(np.mean(np.diag(h)))
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    q_out = np.zeros((k, n), dtype=np.int16)
    nb_total = -(-k // block_size)
    scales = np.zeros((nb_total, n), dtype=np.float64)
    zeros = np.zeros((nb_total, n), dtype=np.float64)
    scale, zero = _rtn_params(w[:block_size], symmetric)
    for i1 in range(0, k, columns):
        i2 = min(i1 + columns, k)
        w1 = w[i1:i2].copy()
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            if row % block_size == 0:
                # `columns` is a multiple of `block_size`, so a block never crosses a batch
                scale, zero = _rtn_params(w1[i : i + block_size], symmetric)
                scales[row // block_size], zeros[row // block_size] = scale, zero
            lo, hi = (INT4_MIN, INT4_MAX) if symmetric else (0, UINT4_MAX)
            q = np.clip(np.rint(w1[i] / scale) + zero, lo, hi)
            q_out[row] = q
            deq = (q - zero) * scale
            e = (w1[i] - deq) / hinv1[i, i]
            w1[i:] -= np.outer(hinv1[i, i:], e)
            err1[i] = e
        w[i2:] -= hinv[i1:i2, i2:].T @ err1
    if symmetric:
        return BlockQuant(q_out.astype(np.int8), scales.astype(np.float32), None, 0, block_size)
    return BlockQuant(
        q_out.astype(np.uint8), scales.astype(np.float32), zeros.astype(np.uint8), 0, block_size
    )


def pack_4bit(values: np.ndarray) -> bytes:
    """Two 4-bit values per byte, the first in the low nibble (ONNX int4/uint4 raw layout)."""
    flat = (values.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, dtype=np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).tobytes()


def dequantize_weight(
    quant: BlockQuant, name: str
) -> tuple[onnx.NodeProto, list[onnx.TensorProto], str]:
    """A DequantizeLinear node (opset 21, block-wise along `quant.axis`) producing the float
    weight `name + '_dq'` from int4 (symmetric) or uint4 (with zero points) data.

    Returns (node, initializers, output name).
    """
    dtype = TensorProto.INT4 if quant.symmetric else TensorProto.UINT4
    q_name, s_name, out = f"{name}_q4", f"{name}_q4_scale", f"{name}_dq"
    inits = [
        helper.make_tensor(q_name, dtype, list(quant.q.shape), pack_4bit(quant.q), raw=True),
        numpy_helper.from_array(quant.scale.astype(np.float32), s_name),
    ]
    inputs = [q_name, s_name]
    if quant.zero_point is not None:
        z_name = f"{name}_q4_zero"
        zp = quant.zero_point
        inits.append(helper.make_tensor(z_name, dtype, list(zp.shape), pack_4bit(zp), raw=True))
        inputs.append(z_name)
    node = helper.make_node(
        "DequantizeLinear",
        inputs,
        [out],
        name=f"{name}_DequantizeLinear",
        axis=quant.axis,
        block_size=quant.block_size,
    )
    return node, inits, out


def matmul_nbits(
    quant: BlockQuant,
    *,
    weight_name: str,
    accuracy_level: int,
) -> tuple[dict[str, int], list[onnx.TensorProto], list[str]]:
    """Attributes, initializers and weight-side input names of a MatMulNBits node for a weight
    [K, N] quantized along axis 0 (blocks of K). Symmetric weights are stored as uint4 with
    MatMulNBits' implicit zero point 8; integer zero points are packed two per byte per column;
    float zero points (HQQ) are stored as floats."""
    if quant.axis != 0 or quant.q.ndim != 2:
        raise ValueError("MatMulNBits needs a [K, N] weight quantized along axis 0")
    k, n = quant.q.shape
    bs = quant.block_size
    k_blocks = -(-k // bs)
    q = quant.q.astype(np.int16)
    if quant.symmetric:
        q = q + 8
    padded = np.zeros((k_blocks * bs, n), dtype=np.uint8)
    padded[:k] = q.astype(np.uint8)
    per_col = padded.T.reshape(n, k_blocks, bs)
    packed = (per_col[..., 0::2] | (per_col[..., 1::2] << 4)).astype(np.uint8)
    base = f"{weight_name}_Q4G{bs}"
    inits = [
        numpy_helper.from_array(packed, base),
        numpy_helper.from_array(
            np.ascontiguousarray(quant.scale.T).reshape(-1).astype(np.float32), f"{base}_scales"
        ),
    ]
    inputs = [base, f"{base}_scales"]
    if quant.zero_point is not None:
        zp = np.ascontiguousarray(quant.zero_point.T)  # [N, k_blocks]
        if np.issubdtype(zp.dtype, np.floating):
            inits.append(numpy_helper.from_array(zp.reshape(-1).astype(np.float32), f"{base}_zp"))
        else:
            cols = np.full((n, 2 * (-(-k_blocks // 2))), 8, dtype=np.uint8)
            cols[:, :k_blocks] = zp
            zp_packed = (cols[:, 0::2] | (cols[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
            inits.append(numpy_helper.from_array(zp_packed, f"{base}_zp"))
        inputs.append(f"{base}_zp")
    attrs = {"K": k, "N": n, "bits": 4, "block_size": bs}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    return attrs, inits, inputs


def _symmetric_scale(blocks: np.ndarray) -> np.ndarray:
    idx = np.abs(blocks).argmax(axis=-1)[..., None]
    extreme = np.take_along_axis(blocks, idx, axis=-1)[..., 0].astype(np.float32)
    scale = extreme / float(INT4_MIN)
    scale[scale == 0] = 1.0
    return scale


def _rtn_params(block: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point per column of `block` [rows, N] (GPTQ's per-group parameters)."""
    if symmetric:
        idx = np.abs(block).argmax(axis=0)
        extreme = block[idx, np.arange(block.shape[1])]
        scale = extreme / float(INT4_MIN)
        scale[scale == 0] = 1.0
        return scale, np.zeros_like(scale)
    lo = np.minimum(block.min(axis=0), 0.0)
    hi = np.maximum(block.max(axis=0), 0.0)
    scale = (hi - lo) / UINT4_MAX
    scale[scale == 0] = 1.0
    return scale, np.clip(np.rint(-lo / scale), 0, UINT4_MAX)


def _to_blocks(weight: np.ndarray, axis: int, block_size: int) -> tuple[np.ndarray, int]:
    moved = np.moveaxis(np.asarray(weight, dtype=np.float32), axis, -1)
    d = moved.shape[-1]
    nb = -(-d // block_size)
    pad = nb * block_size - d
    if pad:
        moved = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    return moved.reshape(*moved.shape[:-1], nb, block_size), d


def _from_blocks(
    q: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray | None,
    weight: np.ndarray,
    axis: int,
    block_size: int,
    d: int,
) -> BlockQuant:
    q = q.reshape(*q.shape[:-2], -1)[..., :d]
    return BlockQuant(
        q=np.moveaxis(q, -1, axis),
        scale=np.moveaxis(scale.astype(np.float32), -1, axis),
        zero_point=None if zero is None else np.moveaxis(zero, -1, axis),
        axis=axis,
        block_size=block_size,
    )
