"""A float32's bits as an int32 and back: what builds 2**k and splits off an exponent."""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _float_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are ``bits`` (an int32), reinterpreted, not converted."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _bits_from_float(typingctx, value):
    """The IEEE bits of the float32 ``value``, as an int32."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


# Typed as Any: numba's intrinsic objects take the typing context that mypy sees as an argument.
float_from_bits: Any = intrinsic(_float_from_bits)
bits_from_float: Any = intrinsic(_bits_from_float)
