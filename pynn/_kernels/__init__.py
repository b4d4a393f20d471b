"""Compiled kernels (Cython over C), all in the one extension module
pynn._kernels.core. Internal: use pynn.ops and pynn.layers."""
