"""ONNX-side passes and checks for FP8 graphs. Needs onnx, onnx-graphsurgeon, numpy, ml_dtypes and
onnxruntime; never torch or fxq (a deployment machine can check a file without them)."""

IR_VERSION = 10  # the ONNX IR version fxq's files carry (what the exporter writes; graphsurgeon would stamp newer)
