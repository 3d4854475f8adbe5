"""onnx-graphsurgeon passes. Each is `pass(graph) -> int`: how many times it fired."""
