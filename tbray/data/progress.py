"""Progress on the slow steps before training: a bar while they run, one line when each ends.

Checking and hashing the real 4,200 X-rays, or decoding them for the cache, takes minutes on a laptop.
The bar (tqdm) goes to stderr and only to a terminal: in a pipe or a log file (CI, `> log`) its redraws
would be noise. The closing line, with the file count and the time taken, is printed either way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def track(items: Iterable[T], total: int, what: str, where: str = "") -> Iterator[T]:
    """Yield `items` under a bar; then print "tbray: <what> <total> files[ <where>] (<seconds> s)"."""
    start = time.perf_counter()
    with tqdm(items, total=total, desc=f"tbray: {what}", unit="file", file=sys.stderr, leave=False,
              disable=not sys.stderr.isatty(), dynamic_ncols=True) as bar:
        yield from bar
    place = f" {where}" if where else ""
    print(f"tbray: {what} {total} file(s){place} ({time.perf_counter() - start:.1f} s)", flush=True)
