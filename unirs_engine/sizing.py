"""Defaults that depend on the model's size and the machine: the batch size, what to expect of a large
model on the CPU, and out-of-memory errors told as such.

The CPU figures come from scripts/bench_fullsize.py on the reference machine below (random weights at
VILA-1.5-3B's shapes, answers of realistic lengths); a request's time scales about linearly with the
parameter count and inversely with the cores, which is all the estimate assumes.
"""

from __future__ import annotations

import os

import torch

MAX_BATCH = 8                    # requests per generate call at most (more gains little on one device)
MEMORY_SHARE = 0.5               # of the free memory a batch may plan to use (fragmentation, the vision pass)
PLANNED_TEXT_TOKENS = 192        # template, instruction and clue of a typical request
# scripts/bench_fullsize.py on 2 cores with AVX512-BF16: seconds per cold request of the full-size model
# (3.14 B parameters) by dtype: ask (8 new tokens), change (24), classify (8 frames, 12). float16 on a
# CPU was not measured: it is taken as float32's (no CPU computes it faster).
REFERENCE_CPU = {"parameters": 3.14e9, "threads": 2,
                 "seconds": {"float32": {"ask": 36.2, "change": 58.4, "classify": 244.5},
                             "bfloat16": {"ask": 15.0, "change": 27.3, "classify": 68.2}}}
SLOW_CPU_SECONDS = 10.0          # an expected ask slower than this on the CPU is worth a warning


def free_memory(device: torch.device) -> int:
    """Bytes the process may still allocate on `device` (CUDA: the driver's free memory; CPU: the
    system's available memory)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_batch_size(free: int, per_request: int) -> int:
    """Requests per generate call that fit in MEMORY_SHARE of `free` bytes, 1..MAX_BATCH."""
    return max(1, min(MAX_BATCH, int(MEMORY_SHARE * free) // max(per_request, 1)))


def expected_cpu_seconds(parameters: int, dtype: str = "float32", threads: int | None = None) -> dict[str, float]:
    """Seconds per request by task (ask, change, classify) for a model of `parameters` at `dtype` on
    this CPU, scaled from REFERENCE_CPU."""
    threads = threads or torch.get_num_threads()
    scale = parameters / REFERENCE_CPU["parameters"] * REFERENCE_CPU["threads"] / max(threads, 1)
    measured = REFERENCE_CPU["seconds"].get(dtype, REFERENCE_CPU["seconds"]["float32"])
    return {task: seconds * scale for task, seconds in measured.items()}


def cpu_warning(model_id: str, parameters: int, dtype: str = "float32", threads: int | None = None) -> str | None:
    """A sentence for the user when this model will be slow on this CPU, else None."""
    expected = expected_cpu_seconds(parameters, dtype, threads)
    if expected["ask"] < SLOW_CPU_SECONDS:
        return None
    return (f"{model_id} ({parameters / 1e9:.1f} B parameters) runs on the CPU here in {dtype}: expect about "
            f"{expected['ask']:.0f} s per question, {expected['change']:.0f} s per change caption and "
            f"{expected['classify']:.0f} s per 8-frame sequence; a GPU (device cuda) answers in seconds")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation that failed: CUDA's OutOfMemoryError, the CPU allocator's error, or
    Python's MemoryError."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
