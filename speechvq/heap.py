"""Give the C heap's free memory back to the operating system (glibc's malloc_trim), where the C library has it.

glibc keeps freed blocks in its heap, and every large block freed raises the size below which it keeps them
(its dynamic mmap threshold, up to 32 MiB). A stage that makes and frees a few MiB of tensors per batch of files
therefore grows its resident memory with the number of files it has processed, not with what it holds: the
bench's features + quantize run peaked at 609 MB for 1,000 files of 1 s, 661-671 MB for 10,000 and 732 MB for
30,000; after a features stage alone over those files, a malloc_trim took RSS from 582, 676 and 717 MB back to
561, 567 and 570. With a trim after each features part the bench's peaks are 609, 627-629 and 658 MB.
Elsewhere (musl, macOS, Windows) this is a no-op."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    # The process's own symbols, which hold the C library's (ctypes.util.find_library would fork ldconfig).
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # a C library without malloc_trim; Windows has no CDLL(None)
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; True where that was possible (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
