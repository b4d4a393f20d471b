from pynn.onnx.importer import load
