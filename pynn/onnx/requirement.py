"""The optional ``onnx`` package, imported when an ONNX function is called,
so that ``import pynn`` works without it."""


def import_onnx(where):
    """The ``onnx`` module, or ImportError naming the extra that brings it."""
    try:
        import onnx
    except ImportError:
        raise ImportError(f"{where} needs the onnx package: pip install 'pynn-runtime[onnx]'") from None
    return onnx
