"""catseg: from a folder of photos to a trained semantic-segmentation model and masks for new photos."""

from catseg.errors import CatsegError

__version__ = "0.1.0"
__all__ = ["CatsegError", "__version__"]
