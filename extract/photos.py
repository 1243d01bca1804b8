"""Decoding real-world photos: EXIF orientation applied, and huge images reduced while decoding or skipped.

Reads one image file per call; writes nothing. extract.images.load_image (hence the cache, both fine-tuning
paths and predictions) decodes through `decode`.
Example: python -c "from extract.photos import decode; print(decode('data/train/cat.0.jpg', 150).shape)"

Pixel limit: PIL refuses images over 2 x MAX_IMAGE_PIXELS at open (DecompressionBombError), before draft mode
could shrink them. This module switches PIL's global check off and applies its own per call, on the pixels it
will really decode: a JPEG is first reduced by libjpeg's draft mode (up to 1/8 per side, while decoding), and only
if it is still over MAX_PIXELS, or is another format over it, is it refused with a reason (the file is then
skipped, never a crash).
"""
import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's default warning limit: ~270 MB as RGB, per thread
Image.MAX_IMAGE_PIXELS = None  # replaced by the per-call check below, which sees the size after draft mode
EXIF_ORIENTATION = 0x0112
ROTATED = {5, 6, 7, 8}  # orientations that swap width and height


class TooLarge(ValueError):
    """An image over MAX_PIXELS even after draft mode: skipped with this reason."""


def orientation(im) -> int:
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is ignored, as viewers do: the pixels are still good
        return 1


def decode(path, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3) of an image file, upright per its EXIF orientation; raises on undecodable files."""
    with Image.open(path) as im:
        # Draft to (size, size): square, so a 90-degree EXIF rotation applied after decoding needs no swap of w/h.
        im.draft("RGB", (size, size))  # JPEG only: libjpeg downscales while decoding, ~4x faster on photos
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise TooLarge(f"{w}x{h} = {w * h:,} pixels after draft mode, over the limit of {MAX_PIXELS:,} "
                           f"(decompression bomb?); not decoded")
        if orientation(im) != 1:
            im = ImageOps.exif_transpose(im)  # the pixels as the camera's viewer shows them
        rgb = im.convert("RGB")  # L, P, CMYK, RGBA (alpha dropped), I;16 ... all become RGB once, here
        return np.asarray(rgb.resize((size, size), Image.BILINEAR), np.uint8)
