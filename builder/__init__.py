"""imgforge: target files in, reproducible images and a verified compose stack out."""

__version__ = "0.1.0"
