"""Thumbnails of DATA's images as inline JPEG data URIs; a placeholder where the file is gone or broken.

Reads image files under DATA. Writes nothing.
Example: python -c "from report.thumbs import thumbnail; print(thumbnail('data/demo/train', 'cat.0.jpg')[:40])"
"""
import base64
import functools
import io
import os

from PIL import Image, ImageDraw

SIZE = 120  # pixels on the longer side: 24 of them in a grid fit a laptop screen, ~4 KB each inline


@functools.lru_cache(maxsize=None)
def placeholder(size: int = SIZE) -> str:
    """A grey square saying the source image is missing (moved, deleted or undecodable since the cache was built)."""
    im = Image.new("RGB", (size, size), (205, 205, 205))
    d = ImageDraw.Draw(im)
    d.line([(0, 0), (size - 1, size - 1)], fill=(150, 150, 150), width=2)
    d.line([(0, size - 1), (size - 1, 0)], fill=(150, 150, 150), width=2)
    d.rectangle([size // 2 - 34, size // 2 - 10, size // 2 + 34, size // 2 + 10], fill=(205, 205, 205))
    d.text((size // 2 - 28, size // 2 - 6), "missing", fill=(60, 60, 60))
    return _uri(im, "PNG")


def _uri(im, fmt="JPEG") -> str:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def thumbnail(root, relpath, size: int = SIZE) -> str:
    """`root/relpath` scaled to fit size x size (aspect kept), or the placeholder; never raises for a bad file."""
    try:
        with Image.open(os.path.join(str(root), relpath)) as im:
            im.draft("RGB", (size, size))
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return _uri(im)
    except Exception:  # gone, unreadable, truncated: PIL raises many types; the page shows it as missing
        return placeholder(size)
