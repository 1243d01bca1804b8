"""Each stage against this machine's limits: the time its work would take at the measured peaks, and the fraction of
that the stage achieves (`*_roofline_fraction` = roofline seconds / measured seconds, 1.0 = at the machine's limit).

Reads the bench's figures (bench/peaks.py, the FLOP counts of bench/profile.py, the timings). Writes nothing.
Example: python -c "from bench.roofline import training_epoch; print(training_epoch.__doc__)"

The model of a training step is phase by phase, because the phases run one after another, not overlapped:
- forward + backward: the profiler's FLOPs at the GEMM peak, or the trained weights' traffic (each read once forward,
  its gradient written once backward: WEIGHT_PASS_BYTES) at the memory bandwidth, whichever is longer;
- the optimizer's update: pure memory traffic, OPTIMIZER_BYTES per trained weight per step at the bandwidth.
Frozen weights are left out: read once per batch, they are a few MB against GFLOPs of work.
"""
import math

WEIGHT_PASS_BYTES = 8  # float32 weight read in the forward pass + float32 gradient written in the backward pass
OPTIMIZER_BYTES = {  # per trained weight per step, float32
    "adam": 28,  # reads weight, gradient, m, v; writes weight, m, v
    "sgd": 12,  # reads weight, gradient; writes weight
}


def training_epoch(gflops: dict, n_train: int, n_val: int, batch: int, params: int, gemm_gflops: float,
                   memory_gb_s: float, optimizer: str = "adam") -> dict:
    """Roofline seconds of one epoch (train steps + validation), by phase.

    `gflops`: {"train": per train image, "val": per val image} (bench/profile.py); `params`: trained weights."""
    steps, val_steps = math.ceil(n_train / batch), math.ceil(n_val / batch)
    compute = (n_train * gflops["train"] + n_val * gflops["val"]) / gemm_gflops
    weights = (steps * WEIGHT_PASS_BYTES + val_steps * 4) * params / (memory_gb_s * 1e9)
    update = steps * OPTIMIZER_BYTES[optimizer] * params / (memory_gb_s * 1e9)
    return {"compute_s": compute, "weight_traffic_s": weights, "forward_backward_s": max(compute, weights),
            "optimizer_s": update, "optimizer_bytes_per_step": OPTIMIZER_BYTES[optimizer] * params,
            "roofline_s": max(compute, weights) + update, "steps": steps, "val_steps": val_steps}


def forward_img_s(gflops_per_image: float, gemm_gflops: float) -> float:
    """Images/s of an inference pass at the GEMM peak (convolutions are GEMMs; a frozen net moves no optimizer state)."""
    return gemm_gflops / gflops_per_image


def part(measured_s: float, roofline_s: float) -> dict:
    """One part of a step: its measured seconds, its seconds at the machine's peaks, and the fraction achieved."""
    return {"seconds": measured_s, "roofline_s": roofline_s,
            "fraction": roofline_s / measured_s if measured_s > 0 else float("nan")}


def bottleneck(parts: dict) -> str:
    """The part that loses the most time against its roofline, in words, for the bench's verdict."""
    name, p = max(parts.items(), key=lambda kv: kv[1]["seconds"] - kv[1]["roofline_s"])
    return (f"{name} takes {p['seconds']:.2f} s against {p['roofline_s']:.2f} s at the machine's peaks "
            f"({p['fraction']:.2f} of its roofline)")
