"""Image files in, one RGB :class:`PIL.Image.Image` out (Pillow does the decoding).

:func:`load_image` reads JPEG, PNG, WebP, BMP, GIF (first frame), TIFF and any
other format Pillow knows, fully decodes it (a truncated file is an error, not a
grey bottom half), applies the EXIF orientation and converts every mode to RGB:

- ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` -> RGB (Pillow's conversion);
- with an alpha channel (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, or ``P`` with a
  transparent colour) -> composited over white;
- 16-bit and 32-bit greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I``) -> 8-bit by
  dividing by 257 (the 0..65535 range onto 0..255); an ``I`` image whose values
  already fit in 0..255 is kept as is, one with values outside 0..65535 is
  stretched from its minimum to its maximum; ``F`` (float) likewise, with values in
  0..1 multiplied by 255.

Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) stays on: both its
error and its warning become an :class:`~attnviz.errors.InputError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

import os
import struct
import warnings
from pathlib import Path

from attnviz.errors import AttnvizWarning, InputError, ModelError

_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_GREY_WIDE = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def load_image(source) -> "Image.Image":
    """Open an image file (or take a PIL image) and return it as RGB, EXIF orientation applied.

    Args:
        source: a path (str or ``os.PathLike``) or a :class:`PIL.Image.Image`.

    Returns:
        A fully decoded RGB image at its own size (after EXIF rotation).

    Raises:
        InputError: missing, empty, unreadable, truncated, corrupt or non-image
        file; a pipe or device (not read); an image over Pillow's decompression-bomb limit; an image with no pixels.
    """
    from PIL import Image

    if isinstance(source, Image.Image):
        _decoded(source, "the image")
        return _to_rgb(_oriented(source), "the image")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"expected an image path or a PIL image, not {type(source).__name__}")
    path = Path(source).expanduser()
    name = str(source)
    if not path.exists():
        raise InputError(f"image file '{name}' does not exist")
    if path.is_dir():
        raise InputError(f"'{name}' is a folder, not an image file")
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read image file '{name}': {exc.strerror or exc}") from exc
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"'{name}' is not a regular file (a pipe or device?); give an image file")
    size = st.st_size
    if size == 0:
        raise InputError(f"image file '{name}' is empty")
    with _bomb_guard(name):
        try:
            image = Image.open(path)
        except Image.UnidentifiedImageError:
            raise InputError(f"'{name}' is not an image file Pillow can read (JPEG, PNG, WebP, BMP, GIF, TIFF...)") from None
        except OSError as exc:
            raise InputError(f"cannot read image file '{name}': {exc.strerror or _first_line(exc)}") from exc
        with image:
            _decoded(image, f"image file '{name}'")
            image = _oriented(image)  # a detached copy, rotated as the EXIF tag says
    return _to_rgb(image, f"image file '{name}'")


class _bomb_guard:
    """Context manager: decompression-bomb error *and* warning -> InputError."""

    def __init__(self, name: str):
        self.name = name
        self._ctx = warnings.catch_warnings()

    def __enter__(self):
        from PIL import Image

        self._ctx.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return self

    def __exit__(self, exc_type, exc, tb):
        from PIL import Image

        self._ctx.__exit__(exc_type, exc, tb)
        if exc_type is not None and issubclass(exc_type, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise InputError(
                f"image file '{self.name}' is too large to decode safely ({_first_line(exc)})"
            ) from None
        return False


def run_processor(processor, image, model_id: str):
    """``processor(images=image, return_tensors="pt")`` for one RGB photo, checked.

    Returns:
        The processor's batch; its ``pixel_values`` is float ``[1, C, H, W]`` (model input pixels).

    Raises:
        ModelError: the processor fails, or returns pixel values of another shape.
    """
    try:
        batch = processor(images=image, return_tensors="pt")
    except (ValueError, TypeError, OSError) as exc:
        raise ModelError(f"the image processor of '{model_id}' failed: {_first_line(exc)[:200]}") from exc
    pv = batch["pixel_values"]
    if pv.ndim != 4 or pv.shape[0] != 1:
        raise ModelError(f"the image processor returned pixel_values of shape {tuple(pv.shape)}, not [1, C, H, W]")
    return batch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _decoded(image, what: str) -> None:
    """Force a full decode of the first frame (a truncated or corrupt file raises here)."""
    from PIL import Image

    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        if image.width < 1 or image.height < 1:
            raise InputError(f"{what} has no pixels ({image.width}x{image.height})")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        msg = _first_line(exc)
        if "truncated" in msg.lower():
            raise InputError(f"{what} is truncated ({msg})") from None
        raise InputError(f"{what} is corrupt or cannot be decoded ({msg})") from None


def _oriented(image):
    """Apply the EXIF orientation tag (rotate/flip so that the photo stands as taken); always returns a copy."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not block the photo
        warnings.warn(f"ignored the image's unreadable EXIF orientation ({_first_line(exc)})", AttnvizWarning, stacklevel=3)
        return image.copy()


def _to_rgb(image, what: str):
    """Every Pillow mode -> 8-bit RGB (alpha composited over white, wide greyscale scaled)."""
    from PIL import Image

    mode = image.mode
    try:
        if mode == "RGB":
            return image
        if mode == "P":
            if "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA":
                return _over_white(image.convert("RGBA"))
            return image.convert("RGB")
        if mode in _ALPHA_MODES:
            return _over_white(image.convert("RGBA"))
        if mode in _GREY_WIDE or mode == "F" or mode.startswith("I;"):
            return Image.fromarray(_wide_to_u8(image), "L").convert("RGB")
        if mode == "LAB":
            # Pillow converts LAB to RGB only through ImageCms
            from PIL import ImageCms

            return ImageCms.applyTransform(
                image, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
            )
        if mode in ("L", "1", "CMYK", "YCbCr", "HSV"):
            return image.convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError, ImportError) as exc:
        raise InputError(f"{what} has pixel mode '{mode}', which cannot be converted to RGB ({_first_line(exc)})") from None


def _over_white(rgba):
    from PIL import Image

    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _wide_to_u8(image):
    """16/32-bit integer or float greyscale -> uint8 array (see module docstring)."""
    import numpy as np

    a = np.asarray(image)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64))
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            a = a * 255.0
        elif lo < 0 or hi > 255:
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if image.mode.startswith("I;16"):
        return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    scaled = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros(a.shape)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
