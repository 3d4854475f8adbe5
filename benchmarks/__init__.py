"""fxq benchmarks. Run as modules (python -m benchmarks.accuracy) so `benchmarks.datasets`
never collides with Hugging Face's `datasets` package."""
