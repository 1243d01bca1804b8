"""bench.json's `roofline` and `bf16` sections: every stage's measured time against this machine's peaks, and what
bfloat16 changes, assembled from the figures the other bench sections measured in the same run.

Reads the results dict of bench/suite.py (with `machine_peaks`). Writes nothing.
Example: python -m bench --n 600   # bench.json: roofline, *_roofline_fraction, bf16

Where a stage misses its target, `bottleneck` names the part of its step that loses the most time against that
part's own roofline: the parts are measured by subtraction (make head's epoch - the in-memory Adam epoch = feed,
validation and callbacks; Adam - SGD in memory = Adam's extra update traffic; SGD in memory = forward + backward).
"""
import numpy as np

from core.precision import AUTO_BF16, native_bf16, resolve

from . import roofline as rl


def training_stage(gflops: dict, params: int, batch: int, n_train: int, n_val: int, measured: float,
              gemm: float, bw: float, split=None, feed_bytes: float = 0.0) -> dict:
    """One training stage: its work, its roofline by phase, the fraction achieved, and its parts where `split`
    (in-memory Adam and SGD epochs) was measured."""
    roof = rl.training_epoch(gflops, n_train, n_val, batch, params, gemm, bw)
    out = {"work": {"gflops_per_train_image": gflops["train"], "gflops_per_val_image": gflops["val"],
                    "trained_weights": params, "optimizer": "adam",
                    "optimizer_bytes_per_step": roof["optimizer_bytes_per_step"], "batch": batch,
                    "n_train": n_train, "n_val": n_val},
           "roofline": roof, "measured_s": measured, "fraction": roof["roofline_s"] / measured}
    if split:
        sgd_update = roof["steps"] * rl.OPTIMIZER_BYTES["sgd"] * params / (bw * 1e9)
        parts = {
            "forward + backward (in-memory SGD epoch)": rl.part(split["sgd"], roof["forward_backward_s"] + sgd_update),
            "Adam's extra update traffic (Adam - SGD, in memory)": rl.part(split["adam"] - split["sgd"],
                                                                          roof["optimizer_s"] - sgd_update),
            "data feed, validation bookkeeping and callbacks (stage's epoch - in-memory Adam epoch)":
                rl.part(measured - split["adam"], feed_bytes / (bw * 1e9)),
        }
        out.update(parts=parts, bottleneck=rl.bottleneck(parts))
    return out


def against_limits(res: dict, head_params: int, head_batch: int, feature_shape) -> dict:
    """bench.json's `roofline` section: extraction, head epoch, cached and end-to-end fine-tuning epochs."""
    peaks, ext, ft = res["machine_peaks"], res["extraction"], res["cached_finetune"]
    gemm, bw = peaks["gemm_gflops_float32"], peaks["memory_gb_s"]
    n = res["config"]["n"]
    at_peak = rl.forward_img_s(ext["gflops_per_image"], gemm)
    ext_parts = {
        f"forward pass on in-memory batches ({n} images)": rl.part(n / ext["forward_img_s"], n / at_peak),
        f"decode, resize and HDF5 write beyond the forward pass ({n} images)":
            rl.part(n / ext["extract_img_s"] - n / ext["forward_img_s"], 0.0),
    }
    out = {"extraction": {"work": {"gflops_per_image": ext["gflops_per_image"]}, "roofline_img_s": at_peak,
                          "measured_img_s": ext["extract_img_s"], "fraction": ext["extract_img_s"] / at_peak,
                          "parts": ext_parts, "bottleneck": rl.bottleneck(ext_parts)}}
    split = res["head_breakdown"]
    out["head_epoch"] = training_stage(
        res["gflops_per_example"]["head"], head_params, head_batch, res["n_train"], res["n_val"],
        res["head_epoch_s"], gemm, bw,
        {"adam": split["head_epoch_s_in_memory_adam"], "sgd": split["head_epoch_s_in_memory_sgd"]},
        feed_bytes=(res["n_train"] + res["n_val"]) * 4 * float(np.prod(feature_shape)))
    g = ft["gflops_per_example"]
    out["cached_finetune"] = training_stage(
        g["cached"], ft["trained_weights"], ft["batch"], ft["n_train"], ft["n_val"], ft["cached_epoch_s"], gemm,
        bw, ft["cached_split"], feed_bytes=(ft["n_train"] + ft["n_val"]) * ft["ram_bytes_per_view"])
    out["end_to_end_finetune"] = training_stage(
        g["end_to_end"], ft["trained_weights"], ft["batch"], ft["n_train"], ft["n_val"],
        ft["end_to_end_epoch_s"], gemm, bw)
    out["model"] = rl.__doc__.split("\n\n", 2)[2].strip()  # how the roofline is counted, stated in the file itself
    return out


STAGE_USE = {"extraction": "inference", "forward": "inference", "cached_finetune_epoch": "training",
             "end_to_end_finetune_epoch": "training"}
SLOWER_MARGIN = 1.05  # a choice is flagged when the other precision is this much faster: below it, run-to-run noise


def auto_by_stage(speeds: dict) -> dict:
    """Each stage's PRECISION=auto choice on this CPU beside both precisions' measured speed (`speeds`: stage ->
    {"float32": x, "bfloat16": y, "unit": ...}, higher is faster), flagged (`auto_is_slower`) where the precision auto
    did not pick was faster by more than SLOWER_MARGIN."""
    out = {}
    for stage, use in STAGE_USE.items():
        pick, sp = resolve("auto", use), speeds[stage]
        other = "float32" if pick == "bfloat16" else "bfloat16"
        out[stage] = {**sp, "use": use, "auto": pick, "bfloat16_speedup": sp["bfloat16"] / sp["float32"],
                      "auto_is_slower": bool(sp[other] > SLOWER_MARGIN * sp[pick])}
    return out


def bf16_section(res: dict, cache_figures: dict) -> dict:
    """bench.json's `bf16`: speed-up of each stage over float32 (same run), feature error and both caches' metrics."""
    peaks, ext, ft = res["machine_peaks"], res["extraction"], res["cached_finetune"]
    b_ext, b_ft = ext["by_precision"]["bfloat16"], ft["by_precision"]["bfloat16"]
    native = native_bf16()
    speeds = {stage: {"float32": f32[key] if img else 1 / f32[key], "bfloat16": bf[key] if img else 1 / bf[key],
                      "unit": "images/s" if img else "epochs/s"}
              for stage, (f32, bf, key, img) in {
                  "extraction": (ext, b_ext, "extract_img_s", True), "forward": (ext, b_ext, "forward_img_s", True),
                  "cached_finetune_epoch": (ft, b_ft, "cached_epoch_s", False),
                  "end_to_end_finetune_epoch": (ft, b_ft, "end_to_end_epoch_s", False)}.items()}
    out = {"native_bf16": native, "auto_picks": {use: resolve("auto", use) for use in AUTO_BF16},
           "auto_by_stage": auto_by_stage(speeds),
           "speedup_over_float32": {
               **{stage: sp["bfloat16"] / sp["float32"] for stage, sp in speeds.items()},
               "head_epoch": "n/a: stage 2 trains on the stored float32 features in float32 at any PRECISION"},
           "extract_img_s": b_ext["extract_img_s"], "forward_img_s": b_ext["forward_img_s"],
           "cached_epoch_s": b_ft["cached_epoch_s"], "end_to_end_epoch_s": b_ft["end_to_end_epoch_s"],
           "extraction_roofline_fraction": b_ext["extract_img_s"] / rl.forward_img_s(
               b_ext["gflops_per_image"], peaks["gemm_gflops_bfloat16"]),
           "cache": cache_figures}
    if not native:
        out["note"] = ("this CPU has no avx512_bf16/amx_bf16: bf16 is emulated (converted around float32 kernels), "
                       "so these speed-ups say nothing of a CPU that has it, and PRECISION=auto picks float32 here for every "
                       "stage")
    return out
