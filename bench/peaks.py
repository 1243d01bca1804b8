"""This machine's own limits, measured in the bench's run: GEMM peak in float32 and bfloat16, and memory bandwidth.

Reads and writes nothing. Example: python -c "from bench.peaks import machine_peaks; print(machine_peaks())"

Peaks are maxima, not medians: a peak is what the machine can do, and every disturbance only lowers a run.
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.precision import native_bf16

GEMM_SIZES = (1024, 2048)  # square matmuls; a 2-core CPU reaches its GEMM peak at 1024-2048 already


def gemm_gflops(dtype: str = "float32", n: int = 2048, seconds: float = 2.0) -> float:
    """Best GFLOP/s of one n x n x n tf.matmul in `dtype` (2 n^3 FLOPs), over `seconds` of repeats after a warm-up."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    a, b = (tf.cast(rng.uniform((n, n)), dtype) for _ in range(2))
    # reduce_sum: one scalar comes back, so the timing is the product, not a 16 MB copy to numpy
    f = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    f(a, b).numpy()
    best, t_end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        f(a, b).numpy()
        dt = time.perf_counter() - t0
        best = max(best, 2 * n ** 3 / dt / 1e9)
        if time.perf_counter() + dt > t_end:
            return best


def copy_gb_s(mib: int = 512, repeats: int = 5) -> dict:
    """Memory bandwidth of a large copy (STREAM's convention: bytes read + bytes written), with 1 thread and with
    one per core (numpy releases the GIL while copying); the array is 8x a typical L3 share, so it is DRAM's rate."""
    src = np.ones(mib * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    out = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        parts = np.array_split(np.arange(len(src)), threads)
        bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]

        def copy(lohi):
            np.copyto(dst[lohi[0]:lohi[1]], src[lohi[0]:lohi[1]])

        best = 0.0
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(repeats):
                t0 = time.perf_counter()
                list(pool.map(copy, bounds))
                best = max(best, 2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
        out[f"copy_gb_s_{threads}_threads"] = best
    return out


def machine_peaks(seconds: float = 2.0) -> dict:
    """{gemm_gflops_float32, gemm_gflops_bfloat16, memory_gb_s, ...}: the denominators of every roofline figure."""
    peaks = {}
    for dtype in ("float32", "bfloat16"):
        runs = {n: gemm_gflops(dtype, n, seconds) for n in GEMM_SIZES}
        peaks[f"gemm_gflops_{dtype}"] = max(runs.values())
        peaks[f"gemm_gflops_{dtype}_by_size"] = {str(n): v for n, v in runs.items()}
    copies = copy_gb_s()
    peaks.update(copies, memory_gb_s=max(copies.values()), native_bf16=native_bf16(),
                 method=f"tf.matmul n x n x n, n in {GEMM_SIZES}, best of {seconds:g} s each; numpy copy of 512 MiB, "
                        f"best of 5, bytes read + written")
    return peaks
