"""Stateless kernels: numpy arrays in, numpy arrays out (../shared/API.md)."""
from pynn.ops.dense import matmul

__all__ = ["matmul"]
