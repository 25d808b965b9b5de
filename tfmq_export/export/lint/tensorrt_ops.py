"""TensorRT's ONNX parser as data: the operator tables the lint rules read (no logic here).

To follow a new TensorRT release, edit the lists below from onnx-tensorrt's ``docs/operators.md``
of that release and its supported opset range.
"""

from __future__ import annotations

__all__ = ["INTEGER_OPS", "TENSORRT_MAX_OPSET", "TENSORRT_MIN_OPSET", "TENSORRT_SUPPORTED_OPS", "TIME_MLP_PATH_OPS"]

#: "supports operators in the inclusive range of opset 9 to opset 24" (onnx-tensorrt, TensorRT 10.15)
TENSORRT_MIN_OPSET = 9
TENSORRT_MAX_OPSET = 24

#: operators marked supported ("Y") in onnx-tensorrt's docs/operators.md for TensorRT 10.15. Ops
#: marked "N" there (ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul, DynamicQuantizeLinear,
#: BitShift, Bitwise*, Compress, Sequence*, String*, Unique, ...) are deliberately absent.
TENSORRT_SUPPORTED_OPS: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "Attention",
    "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv",
    "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand",
    "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "GroupNormalization", "GRU", "HammingWindow", "HannWindow", "Hardmax", "HardSigmoid", "HardSwish",
    "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool", "LRN",
    "LSTM", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul",
    "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow",
    "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
    "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize",
    "ReverseSequence", "RMSNormalization", "RNN", "RoiAlign", "RotaryEmbedding", "Round", "ScaledTanh",
    "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin",
    "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze",
    "STFT", "Sub", "Sum", "Tan", "Tanh", "TensorScatter", "ThresholdedRelu", "Tile", "TopK", "Transpose",
    "Trilu", "Unsqueeze", "Upsample", "Where", "Xor"
})

#: onnxruntime's integer operators: an onnxruntime-target graph, not a TensorRT one
INTEGER_OPS: frozenset[str] = frozenset({
    "ConvInteger", "DynamicQuantizeLinear", "MatMulInteger", "QLinearConv", "QLinearMatMul"
})

#: the ops a sinusoidal time embedding passes through on its way to the first Linear (diffusers'
#: export: Sin -> Concat -> Slice -> Concat (flip_sin_to_cos) -> Cast -> Gemm); walked by ``time-mlp``
TIME_MLP_PATH_OPS: frozenset[str] = frozenset({
    "Add", "Cast", "Concat", "Div", "Expand", "Flatten", "Gather", "Identity", "Mul", "Pad", "Reshape",
    "Slice", "Split", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where"
})
