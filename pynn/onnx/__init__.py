"""ONNX export and import of pynn models (the ``onnx`` extra: ``pip install
'pynn-runtime[onnx]'``). ``import pynn`` never imports the ``onnx`` package;
the functions here import it when called (docs/onnx.md)."""
from pynn.onnx.exporter import export
from pynn.onnx.importer import load

__all__ = ["export", "load"]
