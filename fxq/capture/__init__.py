"""Capture: the one torch.export of the pipeline, and the rewrites that give fxq its canonical graph."""
