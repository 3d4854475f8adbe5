"""The fxq command line."""
