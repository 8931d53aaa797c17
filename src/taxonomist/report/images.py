"""Decode and hash every image of a catalog in worker processes: which files are unreadable, which repeat."""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from taxonomist.data.images import ImageLoadError, content_hash, load_image
from taxonomist.progress import progress_bar


def check_image_files(
    paths: Sequence[str], *, num_workers: int = 2, progress: bool = True
) -> tuple[list[str | None], dict[int, tuple[str, str]]]:
    """Decode and hash every path: (hash per path or None, position -> (reason, detail) of failures).

    A path shared by several rows is checked once. Unreadable files get no hash, so a pile of empty or
    truncated files does not show up as one big "duplicate" group. ``num_workers`` > 1 decodes in that
    many processes (small JPEG decoding is Python-overhead bound, so threads would serialise on the GIL).
    """
    unique = list(dict.fromkeys(paths))
    results: dict[str, tuple[str | None, str | None, str]] = {}
    chunk = max(8, min(256, len(unique) // max(1, num_workers * 16) or 1))
    chunks = [unique[i : i + chunk] for i in range(0, len(unique), chunk)]
    if num_workers <= 1 or len(chunks) <= 1:
        with progress_bar("img", disable=not progress) as bar:
            task = bar.add_task("checking images", total=len(unique))
            for part in chunks:
                results.update(zip(part, _check_chunk(part), strict=True))
                bar.advance(task, len(part))
    else:
        # Submit before the progress bar starts its refresh thread: with fork, every worker is created
        # on the first submits, and a fork taken while another thread holds a lock can deadlock.
        with ProcessPoolExecutor(num_workers, mp_context=_mp_context()) as pool:
            futures = {pool.submit(_check_chunk, part): part for part in chunks}
            with progress_bar("img", disable=not progress) as bar:
                task = bar.add_task("checking images", total=len(unique))
                for future in as_completed(futures):
                    part = futures[future]
                    results.update(zip(part, future.result(), strict=True))
                    bar.advance(task, len(part))
    hashes: list[str | None] = []
    failures: dict[int, tuple[str, str]] = {}
    for i, path in enumerate(paths):
        digest, reason, detail = results[path]
        hashes.append(digest)
        if reason is not None:
            failures[i] = (reason, detail)
    return hashes, failures


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe (Linux, no other Python thread alive): instant workers, no ``__main__`` guard.

    Otherwise spawn (macOS, Windows, Jupyter kernels, a host with threads running), which needs the usual
    ``if __name__ == "__main__":`` guard in scripts.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _check_chunk(paths: Sequence[str]) -> list[tuple[str | None, str | None, str]]:
    """Worker body: (hash, None, "") for a good image, (None, reason, detail) for a bad one."""
    out: list[tuple[str | None, str | None, str]] = []
    for path in paths:
        try:
            load_image(path)
            out.append((content_hash(path), None, ""))
        except ImageLoadError as err:  # content_hash raises it too, e.g. a file deleted after decoding
            out.append((None, err.reason, err.detail))
    return out
