"""`make bench` keeps working: the harness on a handful of images (its figures mean nothing at this size)."""
import json
import os

import numpy as np
import pytest

from bench.limits import SLOWER_MARGIN
from conftest import run_module
from core import WorkflowError
from core.precision import resolve


@pytest.mark.slow
def test_bench_harness_runs_and_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    r = run_module("bench", "--n", 24, "--img-size", 75, "--repeats", 1, "--rss-rows", 120, "--mem-budget", "1M",
                   "--ft-n", 24, "--baseline-rows", 200, "--skip-ray", "--device-figures", "--sweep-trials", 2,
                   "--sweep-epochs", 2, "--report-rows", 2000, "--peak-seconds", 0.2, "--exports", "onnx", "--work", tmp_path / "work",
                   "--out", out, timeout=1500)  # every section at toy size: 11 min on 2 busy cores
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    fractions = {"extraction_roofline_fraction", "head_epoch_roofline_fraction", "cached_finetune_roofline_fraction"}
    assert set(res["targets"]) - {"bf16_extraction_speedup"} == {
        "extract_vs_forward", "head_epoch_speedup", "first_head_speedup", "head_rss_growth", "cached_finetune_speedup",
        *fractions}
    assert ("bf16_extraction_speedup" in res["targets"]) == res["bf16"]["native_bf16"]  # a promise of native bf16 only
    peaks = res["machine_peaks"]
    assert min(peaks["gemm_gflops_float32"], peaks["gemm_gflops_bfloat16"], peaks["memory_gb_s"]) > 0
    for stage in ("extraction", "head_epoch", "cached_finetune", "end_to_end_finetune"):
        assert 0 < res[f"{stage}_roofline_fraction"] == res["roofline"][stage]["fraction"], stage
    for stage in ("extraction", "head_epoch", "cached_finetune"):  # a missed target must say where the time goes
        assert res["roofline"][stage]["bottleneck"] and len(res["roofline"][stage]["parts"]) >= 2, stage
    c = res["head_commits"]  # the default commits less than CHECKPOINT_S=0, which commits every epoch
    assert c["checkpoint_s_0"]["commits"] == c["checkpoint_s_0"]["epochs"] > c["checkpoint_s_60"]["commits"] >= 1
    assert c["checkpoint_s_0"]["bytes"] > c["checkpoint_s_60"]["bytes"] > 0
    assert res["roofline"]["head_epoch"]["work"]["optimizer_bytes_per_step"] == 28 * res["roofline"]["head_epoch"][
        "work"]["trained_weights"]
    b = res["bf16"]
    assert b["cache"]["cache_precision"] == "bfloat16" and b["cache"]["feature_error"]["max_abs"] > 0
    assert min(v for v in b["speedup_over_float32"].values() if not isinstance(v, str)) > 0
    assert 0 <= b["cache"]["head_bfloat16"]["val_accuracy"] <= 1
    assert b["auto_picks"] == {"inference": resolve("auto", "inference"), "training": "float32"}
    for stage, st in b["auto_by_stage"].items():  # each stage's choice beside bf16's speed, flagged when slower
        assert st["auto"] == resolve("auto", st["use"]) and st["float32"] > 0 and st["bfloat16"] > 0
        assert st["bfloat16_speedup"] == pytest.approx(b["speedup_over_float32"][stage])
        other = "float32" if st["auto"] == "bfloat16" else "bfloat16"
        assert st["auto_is_slower"] == (st[other] > SLOWER_MARGIN * st[st["auto"]]), stage
    for t in res["targets"].values():
        assert t["value"] > 0 and isinstance(t["met"], bool)
    assert res["rss"]["head_peak_rss_mib_4x"] > 0 and res["rss"]["cache_mib_4x"] > 3 * res["rss"]["cache_mib_1x"]
    assert {"cpu", "cores", "gpus", "versions"} <= set(res["machine"])
    f = res["float16_vs_float32"]
    assert f["disk_mib_float16"] < f["disk_mib_float32"] and 0 <= f["head_float16"]["val_accuracy"] <= 1
    assert res["device"]["finetune_img_s_float32"] > 0 and res["device"]["finetune_img_s_mixed_float16"] > 0
    assert res["ray_note"] == "not measured: --skip-ray"
    assert res["baseline_at_scale"]["rows"] == 200 and res["baseline_at_scale"]["seconds"] > 0
    ft = res["cached_finetune"]
    assert ft["disk_bytes_per_view"] > 0 and ft["ram_bytes_per_view"] == 4 * np.prod(ft["feature_shape"])
    assert len(ft["cached_epoch_s_runs"]) == len(ft["end_to_end_epoch_s_runs"]) == 2  # warm-up + 1 timed
    assert ft["flop_ceiling"] > 1 and res["head_epoch_flop_ceiling"] > 1  # the frozen part is never free
    assert {"extraction", "head", "recipe", "float16", "rss", "cached_finetune", "device"} <= set(res["section_s"])
    assert set(res["head_breakdown"]) == {"head_epoch_s_in_memory_adam", "head_epoch_s_in_memory_sgd"}
    assert min(res["head_breakdown"].values()) > 0
    assert res["pooled_vs_flatten_epoch"] > 0 and res["head_kinds"]["pooled_parameters"] < res["head_kinds"][
        "flatten_parameters"]
    assert res["sweep_2_s"] > 0 and res["sweep"]["complete"] + res["sweep"]["pruned"] == 2
    assert res["tta"]["tta_flip_cost"] > 0 and res["report_s"] > 0 and res["report"]["at_scale"]["rows"] == 2000
    assert res["checksums"]["plain_read_mb_s"] > 0 and res["checksums"]["checksummed_read_mb_s"] > 0
    assert {"head_kinds", "sweep", "tta", "report", "checksums", "exports"} <= set(res["section_s"])
    assert [(r["format"], r["quantize"]) for r in res["exports"]["rows"]] == [("model.keras", "none"), ("onnx", "none")]
    u = res["updates"]  # the incremental cache beside a full extraction: the backbone sees only what it must
    assert u["steps"]["full_extraction"]["forward_images"] == u["images"] == 24
    assert u["steps"]["add_1pct"]["forward_images"] == u["added"] == 1
    assert all(u["steps"][k]["forward_images"] == 0 for k in ("remove_1pct", "exclude", "relabel", "new_seed"))
    md = (tmp_path / "bench.md").read_text()
    assert "| `make features` updates on 24 images |" in md
    for key in ("head_epoch_speedup", "pooled_vs_flatten_epoch", "sweep_2_s", "report_s", "checksum_read_cost",
                *fractions):
        assert f"| `{key}` |" in md, key
    assert "| onnx | none |" in md
    assert not (tmp_path / "work").exists()  # scratch removed


def test_step_gflops_counts_only_what_a_train_step_runs():
    """4 -> Dense(8), frozen -> Dense(2, sigmoid), trained; batch 1, no biases. Forward: 2*4*8 + 2*8*2 = 96 FLOPs.
    A train step adds the trained kernel's gradient (2*8*2 = 32), and nothing for the frozen layer or the input
    gradient below the trained one: 224 would mean dead backward ops were counted."""
    import keras

    from bench.profile import step_gflops

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, use_bias=False, trainable=False),
                              keras.layers.Dense(2, use_bias=False, activation="sigmoid")])
    assert step_gflops(model, (4,), train=False) * 1e9 == 96
    assert step_gflops(model, (4,), train=True) * 1e9 == 128


def test_roofline_of_a_training_epoch_adds_the_update_to_the_slower_of_compute_and_traffic():
    from bench import roofline as rl

    # 100 train + 20 val images at batch 50: 2 train steps, 1 val step; 1e6 weights; 10 GFLOP/s, 1 GB/s
    r = rl.training_epoch({"train": 0.3, "val": 0.1}, 100, 20, 50, 10 ** 6, 10.0, 1.0)
    assert r["steps"] == 2 and r["val_steps"] == 1
    assert r["compute_s"] == pytest.approx((100 * 0.3 + 20 * 0.1) / 10)  # 3.2 s
    assert r["weight_traffic_s"] == pytest.approx((2 * 8 + 4) * 1e6 / 1e9)
    assert r["optimizer_s"] == pytest.approx(2 * 28 * 1e6 / 1e9)
    assert r["roofline_s"] == pytest.approx(3.2 + 0.056)
    slow_memory = rl.training_epoch({"train": 1e-6, "val": 1e-6}, 100, 20, 50, 10 ** 9, 1e4, 1.0)
    assert slow_memory["forward_backward_s"] == slow_memory["weight_traffic_s"] > slow_memory["compute_s"]
    parts = {"gemm": rl.part(2.0, 1.8), "feed": rl.part(1.0, 0.0), "adam": rl.part(0.5, 0.45)}
    assert rl.bottleneck(parts).startswith("feed takes 1.00 s")  # loses 1.0 s; gemm loses 0.2


def test_machine_peaks_are_measured_and_positive():
    from bench.peaks import copy_gb_s, gemm_gflops

    assert gemm_gflops("float32", 256, 0.05) > 0 and gemm_gflops("bfloat16", 256, 0.05) > 0
    copies = copy_gb_s(mib=16, repeats=2)
    assert copies["copy_gb_s_1_threads"] > 0 and all(v > 0 for v in copies.values())


@pytest.mark.slow
def test_backbone_bench_short_version(tmp_path):
    """`make bench`'s per-backbone part at CI size: three backbones at their minimum sizes, in both precisions with
    PRECISION=auto's pick for each, and an ensemble."""
    from core.precision import resolve

    out, md = tmp_path / "bb.json", tmp_path / "bb.md"
    r = run_module("bench.backbones", "--names", "inception_v3,resnet50,mobilenet_v2_035", "--sizes", "min",
                   "--batch", 2, "--repeats", 1, "--ensemble", "inception_v3,resnet50", "--peak-seconds", 0.2,
                   "--bf16", 1, "--out", out, "--md", md, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["size"] for r in res["backbones"]["inception_v3"]] == [75]
    assert [r["size"] for r in res["backbones"]["resnet50"]] == [32]
    for rows in res["backbones"].values():
        assert rows[0]["images_per_s"] > 0 and rows[0]["gflops_per_image"] > 0 and rows[0]["roofline_fraction"] > 0
    # InceptionV3 at 75 px costs more FLOPs than ResNet50 at 32 px: the profiler counts each network's own work
    assert res["backbones"]["inception_v3"][0]["gflops_per_image"] > res["backbones"]["resnet50"][0]["gflops_per_image"]
    e = res["ensemble"]
    assert set(e["members"]) == {"inception_v3", "resnet50"} and e["ensemble_over_sum"] > 0
    assert e["ensemble"]["gflops_per_image"] > res["backbones"]["inception_v3"][0]["gflops_per_image"]
    assert "| inception_v3 | 75 |" in md.read_text() and "Ensemble (" in md.read_text()
    auto = {n: rows[0]["auto"] for n, rows in res["backbones"].items()}
    assert auto["mobilenet_v2_035"] == "float32" and auto["inception_v3"] == resolve("auto", "inference", gpu=False)
    assert all(rows[0]["bf16_speedup"] > 0 for rows in res["backbones"].values())
    assert "| bf16 / float32 | auto |" in md.read_text()


def test_export_section_times_model_keras_and_each_export(cache_path, train_dir, tmp_path):
    """Size, 1-image latency and batch-32 throughput of model.keras and of an export, in one run, with its proof."""
    from test_finetune import write_head

    from bench.exports import exports_section, markdown_rows, parse_exports

    head_dir = write_head(cache_path, str(tmp_path / "head"))
    sec = exports_section(cache_path, head_dir, train_dir, tmp_path / "exports", repeats=2,
                          which=parse_exports("litert"))
    keras_row, lite = sec["rows"]
    assert (keras_row["format"], lite["format"], lite["quantize"]) == ("model.keras", "litert", "none")
    for r in (keras_row, lite):
        assert r["bytes"] > 1e6 and r["latency_ms"] > 0 and r["batch_img_s"] > 0
    assert lite["max_abs_diff"] <= 1e-4 and 0 <= lite["accuracy"] <= 1
    assert lite["bytes"] == os.path.getsize(tmp_path / "exports" / "model.tflite")
    assert any(line.startswith("| litert | none |") for line in markdown_rows(sec))
    with pytest.raises(WorkflowError, match="not among"):
        parse_exports("onnx:int8")
