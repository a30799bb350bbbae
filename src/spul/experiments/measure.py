"""Peak memory of a block of work: CUDA max allocated on a GPU, sampled resident memory on the CPU."""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
from types import TracebackType

import psutil
import torch

MiB = 1024 * 1024


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS starts from what is live."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


class PeakMemory:
    """`with PeakMemory(device) as peak: ...`, then `peak.mib` (the peak), `peak.growth_mib` (peak minus
    the level at entry: what the block itself added) and `peak.kind` describe it.

    On the CPU it is the resident memory of the whole process (the loaded model included), sampled.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.02):
        self.device = device
        self.interval_s = interval_s
        self.kind = "cuda max allocated" if device.type == "cuda" else "process RSS"
        self._peak = 0
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            process = psutil.Process()
            self._peak = self._start = process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, args=(process,), daemon=True)
            self._thread.start()
        return self

    def _sample(self, process: psutil.Process) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, process.memory_info().rss)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._peak = max(self._peak, psutil.Process().memory_info().rss)

    @property
    def mib(self) -> float:
        """The peak in MiB."""
        return round(self._peak / MiB, 1)

    @property
    def growth_mib(self) -> float:
        """The peak minus the level at entry, in MiB."""
        return round(max(self._peak - self._start, 0) / MiB, 1)
