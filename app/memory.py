"""Give the memory of a large decoded image back to the system (glibc).

A 6000x6000 PNG decodes to 144 MB, freed when its request ends; but glibc keeps freed
heap memory, fragmented across the decode threads' arenas, and the process only grows
(here: 0.2 to 1.7 GB after a dozen such images, never returned). ``malloc_trim`` after
a large image returns it. Small images skip it: a lower mmap threshold would have done
the same for all, at 1.3 ms on every 640x480 request."""

from __future__ import annotations

import ctypes
import ctypes.util

# Images decoded to at least this many pixels are followed by a trim (a 12 MP PNG is
# one; a 12 MP JPEG, decoded at 1/8, is not).
TRIM_PIXELS = 8_000_000


def _libc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


_trim = _libc_trim()


def after_image(pixels: int) -> None:
    """Call once a decoded image of ``pixels`` pixels is no longer referenced. Only
    large ones trim: the model's next run pays for a trim in page faults (2-3 ms)."""
    if _trim is not None and pixels >= TRIM_PIXELS:
        _trim(0)
