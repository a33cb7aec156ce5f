"""chexone: train and evaluate CheXOne-style reasoning vision-language models for chest X-ray interpretation.

Importing the package is light (no torch): ``chexone.__version__`` is the installed distribution's version.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("chexone")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

del PackageNotFoundError, version
