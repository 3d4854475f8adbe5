"""ONNX-side passes and checks for fxq FP8 graphs."""
