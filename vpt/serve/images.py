"""Image bytes from a client -> an RGB PIL image, or an ``ImageInputError`` with the HTTP status it earns.

The pixel count is checked from the header before anything is decoded (a 40-byte PNG can claim 10^10
pixels: a decompression bomb is a 413, not an out-of-memory server). Decoding is ``vpt predict``'s
(``vpt.data.dataset.load_image``: EXIF orientation, 16-bit and palette images), so the numbers match.
"""
from __future__ import annotations

import io
from typing import Optional

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; --max-pixels


class ImageInputError(ValueError):
    """A client's image that can't be served: ``status`` 400 (not an image / truncated) or 413 (too many pixels)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_pixels(data: bytes, max_pixels: Optional[int] = None):
    """Open the header only; raise ImageInputError(413) when width x height exceeds the limit."""
    from PIL import Image, UnidentifiedImageError
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"image too large ({e}); send at most {limit} pixels", 413) from None
    except UnidentifiedImageError:
        raise ImageInputError("not a readable image (no image format recognised); send a PNG, JPEG, WebP, ... "
                              "file's bytes") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageInputError(f"not a readable image ({type(e).__name__}: {str(e)[:200]}); send a PNG, JPEG, "
                              f"WebP, ... file's bytes") from None
    if w * h > limit:
        raise ImageInputError(f"image has {w}x{h} = {w * h} pixels, over the server's limit of {limit} "
                              f"(--max-pixels); send a smaller image", 413)


def decode_image(data: bytes, max_pixels: Optional[int] = None):
    """Bytes -> RGB image (``vpt predict``'s decoding), after the pixel check; ImageInputError otherwise."""
    import warnings

    from PIL import Image

    from ..data.dataset import BAD_IMAGE_ERRORS, load_image
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ImageInputError("empty image; send an image file's bytes")
    check_pixels(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit was checked above
            return load_image(io.BytesIO(data))
    except BAD_IMAGE_ERRORS as e:
        raise ImageInputError(f"not a readable image ({type(e).__name__}: {str(e)[:200]}); the file may be "
                              f"truncated or damaged") from None
