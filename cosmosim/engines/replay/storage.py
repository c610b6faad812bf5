"""Cold reads from storage, and the scratch space they read from.

A cold read measures the device, never the page cache. Two ways, in order of preference:

- `O_DIRECT`: the kernel moves data straight between the device and our buffer. Buffers, offsets
  and lengths must be multiples of ALIGN bytes, which is why every layout here is padded to it.
- `posix_fadvise(DONTNEED)` on a range just before reading it: the kernel drops that range's cached
  pages, so the buffered read that follows goes to the device. Advice may be ignored, so this mode
  is verified with mincore(2) before it is trusted.

A memory-backed filesystem (tmpfs, ramfs) has no device behind it and is refused, as is any
filesystem where neither way works. Scratch files live in a fresh folder that is removed, with
everything in it, when the work is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from pathlib import Path

from cosmosim.errors import InputError
from cosmosim.files import cache_dir
from cosmosim.units import MB, MIB

ALIGN = 4096  # O_DIRECT alignment: a page, a multiple of every common logical block size

MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})
DISK_MARGIN_BYTES = 64 * 2**20  # left free for everyone else when we check free space


def align_up(nbytes: int, to: int = ALIGN) -> int:
    return -(-nbytes // to) * to


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """Zeroed anonymous memory: page aligned, as O_DIRECT wants, and writable for torch views."""
    return mmap.mmap(-1, align_up(max(nbytes, 1)))


def parse_mountinfo(text: str, path: str) -> str | None:
    """The filesystem type of the deepest mount point above `path` (an absolute, resolved path),
    from the text of /proc/self/mountinfo; None when no line covers it."""
    best, best_type = "", None
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fs_type = line.split(" - ", 1)[1].split()[0]
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def filesystem_type(path: Path) -> str | None:
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:  # not Linux: the cold-read checks below still apply
        return None
    return parse_mountinfo(text, str(path.resolve()))


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping); None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed_bytes: int, what: str) -> None:
    available = available_memory_bytes()
    if available is not None and needed_bytes > 0.8 * available:
        raise InputError(f"{what}: needs {needed_bytes / MB:.0f} MB of RAM, {available / MB:.0f} MB available; "
                         "use a smaller cache or --scale")


@contextmanager
def scratch_folder(parent: Path | None, needed_bytes: int, what: str) -> Iterator[Path]:
    """A fresh folder under `parent` (default: the cache folder's scratch/) for `needed_bytes` of
    files; refused when free space is short; removed with its contents on exit, whatever happens."""
    if parent is None:
        parent = cache_dir() / "scratch"
        parent.mkdir(parents=True, exist_ok=True)
    elif not Path(parent).is_dir():
        raise InputError(f"--dir {parent}: not an existing folder")
    free = shutil.disk_usage(parent).free
    if free < needed_bytes + DISK_MARGIN_BYTES:
        raise InputError(f"{parent}: {what} needs {needed_bytes / MB:.0f} MB (+{DISK_MARGIN_BYTES / MB:.0f} MB margin), "
                         f"only {free / MB:.0f} MB free; free some space or use another --dir")
    folder = Path(tempfile.mkdtemp(prefix="cosmosim-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_durably(path: Path, blocks: Iterator[bytes | memoryview]) -> int:
    """Write the blocks to a new file and fsync it, so its pages are clean and can be dropped."""
    written = 0
    with open(path, "xb") as handle:
        for block in blocks:
            written += handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    return written


# ----------------------------------------------------------------------------- page-cache residency
_PROT_READ, _MAP_SHARED = 0x1, 0x01


def resident_pages(fd: int, length: int) -> int:
    """How many pages of the file's first `length` bytes are in the page cache (mincore(2))."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    address = libc.mmap(None, length, _PROT_READ, _MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    try:
        pages = (ctypes.c_ubyte * (-(-length // mmap.PAGESIZE)))()
        if libc.mincore(ctypes.c_void_p(address), length, pages) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(page & 1 for page in pages)
    finally:
        libc.munmap(ctypes.c_void_p(address), length)


# ----------------------------------------------------------------------------- the reader
class ColdReader:
    """Positional reads of one file with the page cache bypassed; safe to share between threads.

    `mode` is "o_direct" or "fadvise". Reads take an ALIGN-aligned writable buffer (a slice of
    `aligned_buffer`) and an ALIGN-aligned offset, in either mode, so callers never care which.
    """

    def __init__(self, path: Path, prefer_direct: bool = True) -> None:
        self.path = path
        self.filesystem = filesystem_type(path) or "unknown"
        if self.filesystem in MEMORY_FILESYSTEMS:
            raise InputError(f"{path.parent}: on {self.filesystem}, a filesystem in RAM: reads there never reach a "
                             "storage device; use --dir on a disk-backed filesystem")
        self.fd, self.mode = -1, ""
        if prefer_direct and hasattr(os, "O_DIRECT"):
            self._try_direct()
        if not self.mode:
            self._try_fadvise()

    def _try_direct(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        except OSError:  # EINVAL: this filesystem does not take O_DIRECT
            return
        probe = aligned_buffer(ALIGN)
        try:
            os.preadv(fd, [memoryview(probe)], 0)
        except OSError:
            os.close(fd)
            return
        self.fd, self.mode = fd, "o_direct"

    def _try_fadvise(self) -> None:
        if not hasattr(os, "posix_fadvise"):
            raise InputError(f"{self.path.parent}: neither O_DIRECT nor posix_fadvise is available here, so reads "
                             "cannot bypass the page cache; use --dir on a Linux disk filesystem")
        fd = os.open(self.path, os.O_RDONLY)
        length = min(os.fstat(fd).st_size, 64 * ALIGN)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: read exactly what is asked
        os.pread(fd, length, 0)  # make the range resident, then check that advice drops it
        os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
        if length and resident_pages(fd, length) > 0:
            os.close(fd)
            raise InputError(f"{self.path.parent}: on {self.filesystem}, O_DIRECT is refused and posix_fadvise(DONTNEED) "
                             "leaves pages cached, so reads cannot bypass the page cache; use --dir on another filesystem")
        self.fd, self.mode = fd, "fadvise"

    def read_into(self, buffer: memoryview, offset: int) -> int:
        """Fill `buffer` from `offset`; returns the bytes read (fewer only at the end of the file)."""
        if self.mode == "fadvise":
            os.posix_fadvise(self.fd, offset, len(buffer), os.POSIX_FADV_DONTNEED)
        done = 0
        while done < len(buffer):
            count = os.preadv(self.fd, [buffer[done:]], offset + done)
            if count == 0:
                break
            done += count
        return done

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ColdReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_exactly(reader: ColdReader, view: memoryview, offset: int) -> None:
    if reader.read_into(view, offset) != len(view):
        raise RuntimeError(f"{reader.path}: short read at offset {offset}: the file is truncated")


WARM_PASSES = 2


def warm_storage(reader: ColdReader, file_bytes: int, passes: int = WARM_PASSES) -> None:
    """Read the whole file `passes` times in MiB requests and discard it, so whatever lies beneath the
    bypassed page cache (a virtual machine's host cache, a drive's own DRAM) holds what it holds
    once a file has been replayed a few times. Measured on the development VM with `dd iflag=direct`:
    a 189 MiB file read at 1.1, 2.0 and 2.3 GB/s on its first three passes, a 1 GiB one at 0.7 GB/s
    on each; calibrate, the probe and replay must all see the file in the same state."""
    buffer = memoryview(aligned_buffer(MIB))
    for _ in range(passes):
        for offset in range(0, file_bytes, MIB):
            reader.read_into(buffer, offset)


def submit_read(pool: Executor, reader: ColdReader, view: memoryview, offset: int, request_bytes: int) -> list[Future]:
    """Read len(view) bytes at `offset` into `view`, submitted to `pool` as requests of at most
    `request_bytes`: how replay reads a missed expert, and how calibrate times one. Each future
    raises if its request comes back short."""
    return [pool.submit(_read_exactly, reader, view[start:start + request_bytes], offset + start)
            for start in range(0, len(view), request_bytes)]
