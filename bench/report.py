"""The bench's verdicts against its targets, and bench.md.

Reads the results dict the suite builds. Writes nothing itself (bench/suite.py writes bench.json and bench.md).
Example: python -m bench --n 600
"""
TARGETS = {"extract_vs_forward": (">=", 0.85), "head_epoch_speedup": (">=", 10.0),
           "first_head_speedup": (">", 1.0), "head_rss_growth": ("<=", 1.10),
           "cached_finetune_speedup": (">=", 5.0), "extraction_roofline_fraction": (">=", 0.6),
           "head_epoch_roofline_fraction": (">=", 0.5), "cached_finetune_roofline_fraction": (">=", 0.5),
           "bf16_extraction_speedup": (">=", 1.3)}


def check(key, value):
    op, target = TARGETS[key]
    ok = {">=": value >= target, ">": value > target, "<=": value <= target}[op]
    return {"value": round(value, 3), "target": f"{op} {target}", "met": bool(ok)}


def markdown(res) -> str:
    lines = [f"Measured by `make bench` (BENCH_N={res['config']['n']}, {res['config']['img_size']}px, "
             f"WEIGHTS=none) on {res['machine']['cpu']}, {res['machine']['cores']} cores, "
             f"GPU: {', '.join(res['machine']['gpus']) or 'none'}; {res['created']}.", "",
             "| key | value | target | met |", "|---|---|---|---|"]
    for key, r in res["targets"].items():
        lines.append(f"| `{key}` | {r['value']} | {r['target']} | {'yes' if r['met'] else '**no**'} |")
    for key in ("baseline_fit_s", "extract_img_s", "forward_img_s", "recipe_epoch_s", "head_epoch_s",
                "head_epoch_s_deterministic", "head_epoch_speedup_deterministic"):
        lines.append(f"| `{key}` | {res[key]:.3f} | reported | |")
    g, ft = res["gflops_per_example"], res["cached_finetune"]
    lines.append(f"| `head_epoch_speedup` if every FLOP took as long (train step / val forward GFLOPs per image: "
                 f"recipe {g['recipe']['train']:.3f} / {g['recipe']['val']:.3f}, head {g['head']['train']:.3f} / "
                 f"{g['head']['val']:.3f}) | {res['head_epoch_flop_ceiling']:.1f} | ceiling | |")
    b = res["head_breakdown"]
    lines.append(f"| head epoch on in-memory features, Adam / SGD (no optimizer state) | "
                 f"{b['head_epoch_s_in_memory_adam']:.2f} s / {b['head_epoch_s_in_memory_sgd']:.2f} s | reported | |")
    g = ft["gflops_per_example"]
    lines.append(f"| `cached_finetune_speedup` if every FLOP took as long (end-to-end {g['end_to_end']['train']:.3f}"
                 f" / {g['end_to_end']['val']:.3f}, cached {g['cached']['train']:.3f} / {g['cached']['val']:.3f}) "
                 f"| {ft['flop_ceiling']:.1f} | ceiling | |")
    b = res["baseline_at_scale"]
    lines.append(f"| `baseline_fit_s` at {b['rows']:,} x {b['channels']} | {b['seconds']:.1f} | reported | |")
    d = res["float16_vs_float32"]
    for part in ("head", "baseline"):
        a, b = d[f"{part}_float32"], d[f"{part}_float16"]
        lines.append(f"| `float16_vs_float32` {part} | acc {a['val_accuracy']:.4f} vs {b['val_accuracy']:.4f}, "
                     f"log loss {a['val_log_loss']:.4f} vs {b['val_log_loss']:.4f} | reported | |")
    lines.append(f"| float16 feature error | max abs {d['feature_max_abs_err']:.2e}, max rel "
                 f"{d['feature_max_rel_err']:.2e}; disk {d['disk_mib_float16']:.1f} vs {d['disk_mib_float32']:.1f} MiB "
                 f"| reported | |")
    r = res["rss"]
    lines.append(f"| head peak RSS | {r['head_peak_rss_mib_1x']:.0f} MiB on {r['cache_mib_1x']:.0f} MiB cache, "
                 f"{r['head_peak_rss_mib_4x']:.0f} MiB on {r['cache_mib_4x']:.0f} MiB | reported | |")
    lines.append(f"| fine-tune epoch ({ft['n_train']} train + {ft['n_val']} val images) | end-to-end "
                 f"{ft['end_to_end_epoch_s']:.1f} s, cached {ft['cached_epoch_s']:.2f} s | reported | |")
    lines.append(f"| per cached view at mixed6 {tuple(ft['feature_shape'])} | disk {ft['disk_bytes_per_view'] / 2**10:.0f} "
                 f"KiB, RAM {ft['ram_bytes_per_view'] / 2**10:.0f} KiB (float32 while training) | reported | |")
    for key, value in res.get("ray", {}).items():
        lines.append(f"| `{key}` | {value:.1f} | reported | |")
    if "ray_note" in res:
        lines.append(f"| Ray extraction images/s | {res['ray_note']} | | |")
    if "device" in res:
        d = res["device"]
        lines.append(f"| on {d['device']}: extraction / fine-tuning images/s | {d['extract_img_s']:.1f} / float32 "
                     f"{d['finetune_img_s_float32']:.1f}, mixed_float16 {d['finetune_img_s_mixed_float16']:.1f} "
                     f"| reported | |")
    else:
        lines.append("| GPU extraction / fine-tuning images/s | not measured: no GPU on this machine | | |")
    k, t, s, r, c = res["head_kinds"], res["tta"], res["sweep"], res["report"], res["checksums"]
    lines.append(f"| `pooled_vs_flatten_epoch` | {k['pooled_vs_flatten_epoch']:.1f} (flatten {k['flatten_epoch_s']:.2f} s, "
                 f"pooled {k['pooled_epoch_s']:.2f} s; {k['note']}) | reported | |")
    lines.append(f"| `sweep_{s['trials']}_s` | {s['seconds']:.0f} ({s['complete']} complete, {s['pruned']} pruned, "
                 f"{s['epochs']} epochs at most each) | reported | |")
    lines.append(f"| TTA=flip cost | {t['tta_flip_cost']:.2f}x ({t['note']}) | reported | |")
    lines.append(f"| `report_s` | {r['report_s']:.1f} on {r['rows']} rows; row-dependent parts at "
                 f"{r['at_scale']['rows']:,} rows: {r['at_scale']['report_s']:.1f} s | reported | |")
    lines.append(f"| `checksum_read_cost` | {c['checksum_read_cost']:.2f} (read {c['plain_read_mb_s']:.0f} vs "
                 f"{c['checksummed_read_mb_s']:.0f} MB/s; write cost {c.get('checksum_write_cost', float('nan')):.2f}) "
                 f"| reported | |")
    c0, cd = res["head_commits"].values()  # CHECKPOINT_S=0, then the default
    lines.append(f"| `make head` resume state (CHECKPOINT_S=0 vs default) | {c0['commits']} vs {cd['commits']} commits, "
                 f"{c0['bytes'] / 1e6:.0f} vs {cd['bytes'] / 1e6:.0f} MB written in {c0['seconds']:.1f} vs "
                 f"{cd['seconds']:.1f} s; wall per epoch {c0['wall_s_per_epoch']:.2f} vs {cd['wall_s_per_epoch']:.2f} s "
                 f"({cd['epochs']} epochs) | reported | |")
    if "updates" in res:
        lines.append(update_row(res["updates"]))
    lines += limits_rows(res)
    spent = ", ".join(f"{k} {v:.0f}" for k, v in res["section_s"].items())
    lines.append(f"| wall seconds per part | {spent} | | |")
    if "exports" in res:  # its own table: one row per format and quantisation
        from .exports import markdown_rows

        lines += ["", *markdown_rows(res["exports"])]
    return "\n".join(lines) + "\n"


def limits_rows(res) -> list:
    """bench.md's rows for the machine's peaks, each stage's roofline (with its bottleneck) and bfloat16."""
    p, r, b = res["machine_peaks"], res["roofline"], res["bf16"]
    rows = [f"| machine peaks | GEMM {p['gemm_gflops_float32']:.0f} GFLOP/s float32, {p['gemm_gflops_bfloat16']:.0f} "
            f"bfloat16; memory {p['memory_gb_s']:.1f} GB/s (copy); native bf16: {'yes' if p['native_bf16'] else 'no'} "
            f"| measured | |"]
    for stage in ("extraction", "head_epoch", "cached_finetune", "end_to_end_finetune"):
        s = r[stage]
        if stage == "extraction":
            what = f"{s['measured_img_s']:.1f} images/s vs {s['roofline_img_s']:.1f} at peak"
        else:
            what = (f"{s['measured_s']:.2f} s vs {s['roofline']['roofline_s']:.2f} s at peak (compute "
                    f"{s['roofline']['compute_s']:.2f} s, weight traffic {s['roofline']['weight_traffic_s']:.2f} s, "
                    f"Adam {s['roofline']['optimizer_s']:.2f} s: {s['work']['optimizer_bytes_per_step'] / 1e9:.2f} GB "
                    f"per step)")
        if "bottleneck" in s:
            what += f"; most time lost: {s['bottleneck']}"
        rows.append(f"| `{stage}_roofline_fraction` | {s['fraction']:.2f}: {what} | reported | |")
    sp = b["speedup_over_float32"]
    c = b["cache"]
    picks = ", ".join(f"{stage.replace('_', ' ')} {st['float32']:.3g} vs {st['bfloat16']:.3g} {st['unit']} "
                      f"({st['bfloat16_speedup']:.2f}x), auto picks {st['auto']}"
                      + (" (**the slower one**)" if st["auto_is_slower"] else "")
                      for stage, st in b["auto_by_stage"].items())
    rows.append(f"| bfloat16 over float32 (native bf16 {'yes' if b['native_bf16'] else 'no: emulated'}) | {picks} "
                f"| reported | |")
    e = c["feature_error"]
    rows.append(f"| bfloat16 cache | feature error max abs {e['max_abs']:.2e} ({e['max_rel']:.1e} of the largest), "
                f"relative RMS {e['rms_rel']:.1e}; "
                f"head val acc {c['head_float32']['val_accuracy']:.4f} vs {c['head_bfloat16']['val_accuracy']:.4f}, "
                f"log loss {c['head_float32']['val_log_loss']:.4f} vs {c['head_bfloat16']['val_log_loss']:.4f} "
                f"(float32 vs bfloat16) | reported | |")
    return rows


def update_row(u: dict) -> str:
    """The incremental cache's figures (bench/updates.py) as one table row."""
    st = u["steps"]
    parts = ", ".join(f"{k} {v['wall_s']:.1f} s ({v['forward_images']} forward, {v['peak_rss_mib']:.0f} MiB)"
                      for k, v in st.items())
    met = "yes" if all(u["targets"].values()) else "NO: " + ", ".join(k for k, v in u["targets"].items() if not v)
    return (f"| `make features` updates on {u['images']:,} images | {parts}; add 1% / full = "
            f"{u['add_1pct_over_full']:.3f} | add 1% <= 2% of full + 5 s; EXCLUDE, RELABEL, SEED <= 5 s, 0 forward | "
            f"{met} |")
