"""MTLRank on Ray: trace-norm multi-task networks that predict each gene's RNA
velocity from transcription-factor expression and activity."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mtlrank-ray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .api import load_results, prepare, tune  # noqa: E402  (the notebook entry points)

__all__ = ["load_results", "prepare", "tune", "__version__"]
