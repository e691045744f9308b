"""QR codes in pictures: what a phone's camera would open.

A phishing message that carries its link as a QR code in an image has no
link for a filter that reads only text ("quishing"). :func:`scan` decodes
the QR codes (QR, Micro QR, rMQR) of a message's pictures with zxing-cpp,
the maintained C++ port of ZXing, after Pillow has read them.

Pictures are hostile input like the rest; every step is bounded by
``[limits]``:

- ``images``: pictures searched per message (the rest are named, not read);
- ``image_bytes``: a picture's file size; a larger one is not opened;
- ``image_pixels``: its width x height as its header declares it, read
  before a single pixel is decoded, so a small file that unpacks to
  gigapixels (a decompression bomb) is never unpacked;
- ``image_seconds``: time spent decoding, for all pictures of a message;
  a picture is not started once it is spent. One picture's own time is
  bounded by its size: a large one is reduced to at most
  :data:`SEARCH_SIDE` pixels a side first (a JPEG by its decoder's own
  reduction, which is cheaper), which keeps any QR code a phone could read
  from a screen.

What went past a limit is returned in :attr:`Scan.skipped`, so that the
check can name it: a limit is a finding, never a clean pass. A picture
that cannot be read (truncated, corrupt, a format Pillow does not know) is
counted in :attr:`Scan.unreadable`; ordinary mail has some.
"""

from __future__ import annotations

import functools
import io
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.config import LimitsSection

if TYPE_CHECKING:
    import zxingcpp

# A picture is searched at this size at most (the longer side, in pixels):
# a QR code a phone reads off a screen or a printout keeps modules of
# several pixels at this scale, and zxing's time grows with the area.
SEARCH_SIDE = 1600
# The first bytes of the formats Pillow reads and mail carries.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
               b"II*\x00", b"MM\x00*")


@dataclass(frozen=True)
class QrCode:
    image: str  # the picture it was found in, as the message names it
    text: str  # what the code says (a URL, usually)


@dataclass
class Scan:
    codes: list[QrCode] = field(default_factory=list)
    searched: int = 0  # pictures decoded and searched
    unreadable: int = 0  # pictures Pillow could not read
    skipped: list[str] = field(default_factory=list)  # past a limit: what and why


def is_image(data: bytes) -> bool:
    """Whether ``data`` starts like a picture Pillow can read (PNG, JPEG,
    GIF, BMP, TIFF, WebP), whatever the part's declared type or name."""
    return data.startswith(IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def scan(images: Iterable[tuple[str, bytes]], limits: LimitsSection,
         clock: Callable[[], float] = time.monotonic) -> Scan:
    """The QR codes in ``images`` ((name, bytes) pairs), within ``limits``."""
    found = Scan()
    started = clock()
    for name, data in images:
        if found.searched + found.unreadable >= limits.images:
            found.skipped.append(f"{name}: past [limits] images ({limits.images})")
            continue
        if clock() - started >= limits.image_seconds:
            found.skipped.append(f"{name}: past [limits] image_seconds "
                                 f"({limits.image_seconds:g}s)")
            continue
        if len(data) > limits.image_bytes:
            found.skipped.append(f"{name}: {len(data)} bytes, past [limits] image_bytes "
                                 f"({limits.image_bytes})")
            continue
        try:
            texts = _decode(data, limits.image_pixels)
        except TooLarge as exc:
            found.skipped.append(f"{name}: {exc}")
            continue
        except Exception:  # Pillow raises many kinds on broken pictures
            found.unreadable += 1
            continue
        found.searched += 1
        found.codes.extend(QrCode(name, text) for text in texts)
    return found


class TooLarge(Exception):
    pass


def _decode(data: bytes, max_pixels: int) -> list[str]:
    import zxingcpp
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow warns of pictures over its own bomb limit; ours is checked first.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            picture = Image.open(io.BytesIO(data))  # reads the header only
        except Image.DecompressionBombError:  # Pillow's own limit, twice its warning's
            raise TooLarge(f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels, past "
                           f"[limits] image_pixels ({max_pixels})") from None
        width, height = picture.size
        if width * height > max_pixels:
            raise TooLarge(f"{width}x{height} pixels, past [limits] image_pixels "
                           f"({max_pixels})")
        if picture.format == "JPEG":
            picture.draft("L", (SEARCH_SIDE, SEARCH_SIDE))  # the decoder reduces as it reads
        picture.seek(0)  # an animation's first frame
        grey = picture.convert("L")
    if max(grey.size) > SEARCH_SIDE:
        grey.thumbnail((SEARCH_SIDE, SEARCH_SIDE))
    # QR codes find their own orientation; rotating is for 1-D barcodes.
    codes = zxingcpp.read_barcodes(grey, formats=_qr_formats(), try_rotate=False)
    return [code.text for code in codes if code.text]


@functools.cache
def _qr_formats() -> zxingcpp.BarcodeFormats:
    import zxingcpp

    return zxingcpp.barcode_formats_from_str("QRCode,MicroQRCode,RMQRCode")
