"""fxq.lower: the quantized graph on real FP8 kernels in PyTorch."""
