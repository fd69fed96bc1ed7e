"""edgebin: compress trained PyTorch models and compile them for edge hardware.

The Python API mirrors the CLI: `edgebin.pipeline.compress(...)` is what `edgebin compress` runs.
"""

__version__ = "0.1.0"
