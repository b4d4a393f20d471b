"""Compiled kernels (Cython over C). Internal: use pynn.ops and pynn.layers."""
