"""Export: the quantized program as an ONNX file for TensorRT."""
