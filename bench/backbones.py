"""Per backbone: extraction images/s at its default size and at 150 px, profiled GFLOPs per image, the fraction of
the GEMM roofline it reaches, and one ensemble's cost against the sum of its parts. On a CPU with native bf16, also
images/s in bf16 and whether PRECISION=auto picks the faster of the two for that backbone (core/precision.py).

Reads nothing (random uint8 batches in memory; WEIGHTS=none: weights do not change the work). Writes --out (JSON)
and, with --md, the Markdown table that docs/performance.md quotes.
Example: python -m bench.backbones --out artifacts/bench_backbones.json --md artifacts/bench_backbones.md
Short (CI): python -m bench.backbones --names inception_v3,resnet50 --sizes min --ensemble inception_v3,resnet50 ...

images/s is the traced forward pass (extract.features.make_forward, the one stage 1 runs) on an in-memory batch:
decode and HDF5 writes are left out, so backbones compare on the network alone. The roofline is the forward's
GFLOPs at this machine's float32 GEMM peak (bench/peaks.py, measured in the same run), as bench/roofline.py does.
"""
import argparse
import time

import numpy as np

from core import WorkflowError, cli
from core.files import write_json, write_text
from core import precision
from core.precision import building
from extract import backbone, backbones, ensemble
from extract.features import make_forward

from .peaks import gemm_gflops
from .profile import step_gflops
from .roofline import forward_img_s
from .timing import machine, median

# A bf16 / float32 ratio within 1 +- NOISE is a tie: either precision is as fast. Two runs of one row on 2 cores shared
# with other jobs differed by up to 10% for most backbones (docs/bench_precision.md).
NOISE = 0.10
RECIPE_SIZE = 150  # the recipe's IMG_SIZE: every backbone is also measured there, to compare at equal pixels
ENSEMBLE = "inception_v3,xception,resnet50"  # the ypwhs/dogs_vs_cats entry's three


def time_forwards(models, size: int, batch: int, repeats: int) -> list:
    """Median images/s of each model over `repeats` forward passes of one batch, after a tracing call; the models'
    passes take turns, so a load that comes and goes on shared cores slows each of them alike."""
    forwards = [make_forward(m) for m in models]
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    for forward in forwards:
        forward(x)[0].numpy()
    rates = [[] for _ in models]
    for _ in range(repeats):
        for forward, r in zip(forwards, rates):
            t0 = time.perf_counter()
            forward(x)[0].numpy()
            r.append(batch / (time.perf_counter() - t0))
    return [median(r) for r in rates]


def time_forward(model, size: int, batch: int, repeats: int) -> float:
    return time_forwards([model], size, batch, repeats)[0]


def measure(model, size: int, batch: int, repeats: int, peak: float, img_s: float | None = None) -> dict:
    gflops = step_gflops(model, (size, size, 3), train=False)
    img_s = time_forward(model, size, batch, repeats) if img_s is None else img_s
    roof = forward_img_s(gflops, peak)
    return {"size": size, "images_per_s": img_s, "gflops_per_image": gflops, "roofline_images_per_s": roof,
            "roofline_fraction": img_s / roof}


def sizes_of(spec, which) -> list:
    """The sizes to measure `spec` at: its default and 150 px ("full"), 150 px alone ("recipe"), or its minimum
    ("min", the CI run)."""
    if which == "min":
        return [spec.min_size]
    if which == "recipe":
        return [max(RECIPE_SIZE, spec.min_size)]
    return sorted({spec.default_size, max(RECIPE_SIZE, spec.min_size)})


def bf16_row(spec, bf16_img_s: float, fp32_img_s: float) -> dict:
    """bf16 images/s, its ratio to float32, what PRECISION=auto picks for `spec` here and whether that is the faster
    one (a tie within NOISE counts as either)."""
    img_s, ratio = bf16_img_s, bf16_img_s / fp32_img_s
    auto = precision.resolve("auto", "inference", gpu=False, bf16_loses=spec.bf16_loses)
    faster = "bfloat16" if ratio > 1 else "float32"
    return {"images_per_s_bfloat16": img_s, "bf16_speedup": ratio, "auto": auto,
            "auto_is_faster": auto == faster or abs(ratio - 1) <= NOISE}


def bench_backbones(names, which: str, batch: int, repeats: int, ensemble_names: str, peak_seconds: float,
                    bf16: bool = False) -> dict:
    import keras

    peak = gemm_gflops("float32", 1024, peak_seconds)
    out = {"machine": machine(), "gemm_gflops_float32": peak, "batch": batch, "repeats": repeats, "sizes": which,
           "precision": "float32", "bf16": bf16, "cpu_bf16_flags": sorted(set(precision.NATIVE_BF16_FLAGS)
                                                                          & precision.cpu_flags()),
           "backbones": {}}
    for name in names:
        spec = backbones.get(name)
        rows = []
        for size in sizes_of(spec, which):
            models = []
            for p in ("float32", "bfloat16") if bf16 else ("float32",):
                with building(p):
                    models.append(backbone.build_backbone(spec, size, [spec.feature_layer], "none"))
            img_s = time_forwards(models, size, batch, repeats)  # both precisions in turns: their ratio holds
            rows.append({**measure(models[0], size, batch, repeats, peak, img_s[0]), "layer": spec.feature_layer,
                         "params": models[0].count_params()})
            r = rows[-1]
            print(f"{name} at {size} px: {r['images_per_s']:.1f} images/s, {r['gflops_per_image']:.2f} GFLOPs/image, "
                  f"{r['roofline_fraction']:.2f} of the roofline")
            del models
            keras.backend.clear_session()
            if bf16:
                r.update(bf16_row(spec, img_s[1], img_s[0]))
                print(f"{name} at {size} px in bf16: {r['images_per_s_bfloat16']:.1f} images/s "
                      f"({r['bf16_speedup']:.2f}x); PRECISION=auto picks {r['auto']}"
                      f"{'' if r['auto_is_faster'] else ', the slower one: revisit its bf16_loses'}")
        out["backbones"][name] = rows
    if ensemble_names:
        out["ensemble"] = bench_ensemble(ensemble_names, which, batch, repeats, peak)
    return out


def bench_ensemble(names: str, which: str, batch: int, repeats: int, peak: float) -> dict:
    """The ensemble's trunk (one input at the largest size, a resize per branch, every member, pooled, concatenated)
    against its members one by one at their own sizes: seconds per image, and their ratio."""
    members = tuple((spec, spec.min_size if which == "min" else spec.default_size) for spec, _ in ensemble.parse(names))
    infos = [backbone.resolve_weights(spec, "none") for spec, _ in members]
    parts = {}
    for (spec, size), info in zip(members, infos):
        with building("float32"):
            model = backbone.build_backbone(spec, size, [spec.feature_layer], info)
        parts[spec.name] = {"size": size, "images_per_s": time_forward(model, size, batch, repeats)}
    with building("float32"):
        trunk = ensemble.build_trunk(members, infos)
    size = max(s for _, s in members)
    whole = measure(trunk, size, batch, repeats, peak)
    sum_s = sum(1 / p["images_per_s"] for p in parts.values())
    res = {"members": parts, "ensemble": whole, "sum_of_parts_s_per_image": sum_s,
           "ensemble_s_per_image": 1 / whole["images_per_s"],
           "ensemble_over_sum": (1 / whole["images_per_s"]) / sum_s}
    print(f"ensemble {names}: {whole['images_per_s']:.1f} images/s, {res['ensemble_over_sum']:.2f}x the sum of its "
          f"parts' seconds per image")
    return res


def markdown(res) -> str:
    """The per-backbone table and the ensemble line, as docs/performance.md shows them."""
    lines = [f"Forward pass only (make_forward on in-memory uint8 batches of {res['batch']}, float32, WEIGHTS=none), "
             f"median of {res['repeats']}; roofline = GFLOPs at this run's float32 GEMM peak "
             f"({res['gemm_gflops_float32']:.0f} GFLOP/s) on {res['machine']['cpu']}, {res['machine']['cores']} cores.",
             "", "| BACKBONE | px | images/s | GFLOPs/image | roofline images/s | fraction |"
                 + (" bf16 images/s | bf16 / float32 | auto |" if res.get("bf16") else ""),
             "|---|---|---|---|---|---|" + ("---|---|---|" if res.get("bf16") else "")]
    for name, rows in res["backbones"].items():
        for r in rows:
            bf = (f" {r['images_per_s_bfloat16']:.1f} | {r['bf16_speedup']:.2f} | {r['auto']}"
                  f"{'' if r['auto_is_faster'] else ' (slower!)'} |" if "bf16_speedup" in r else "")
            lines.append(f"| {name} | {r['size']} | {r['images_per_s']:.1f} | {r['gflops_per_image']:.2f} | "
                         f"{r['roofline_images_per_s']:.1f} | {r['roofline_fraction']:.2f} |" + bf)
    if "ensemble" in res:
        e = res["ensemble"]
        parts = " + ".join(f"{n} {p['size']} px {p['images_per_s']:.1f}/s" for n, p in e["members"].items())
        lines += ["", f"Ensemble ({parts}): {e['ensemble']['images_per_s']:.1f} images/s, "
                      f"{e['ensemble_s_per_image'] * 1e3:.1f} ms/image against "
                      f"{e['sum_of_parts_s_per_image'] * 1e3:.1f} ms/image for the parts one by one "
                      f"({e['ensemble_over_sum']:.2f}x)."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.backbones", description=__doc__.splitlines()[0])
    p.add_argument("--names", default=",".join(backbones.REGISTRY), help="backbones, comma-separated (default: all)")
    p.add_argument("--sizes", default="full", choices=["full", "recipe", "min"],
                   help="full: each at its default size and at 150 px; recipe: at 150 px only; min: each at its "
                        "minimum size (CI). The ensemble runs at its members' default sizes (min: minimum sizes)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ensemble", default=ENSEMBLE, help="BACKBONES of the ensemble measured (empty: none)")
    p.add_argument("--peak-seconds", type=float, default=2.0, help="seconds of GEMM repeats for the peak")
    p.add_argument("--bf16", default="auto", choices=["auto", "0", "1"],
                   help="also time each backbone in bf16 and check PRECISION=auto's pick (auto: where the CPU has "
                        "native bf16; elsewhere bf16 is emulated and auto never picks it)")
    p.add_argument("--out", default="artifacts/bench_backbones.json")
    p.add_argument("--md", default="", help="also write the Markdown table here")
    a = p.parse_args(argv)
    if a.batch < 1 or a.repeats < 1:
        raise WorkflowError(f"--batch {a.batch} --repeats {a.repeats}: both must be at least 1")
    return a


@cli
def main(argv=None):
    a = parse_args(argv)
    names = [n.strip() for n in a.names.split(",") if n.strip()]
    bf16 = precision.native_bf16() if a.bf16 == "auto" else a.bf16 == "1"
    res = bench_backbones(names, a.sizes, a.batch, a.repeats, a.ensemble, a.peak_seconds, bf16)
    write_json(a.out, res)
    if a.md:
        write_text(a.md, markdown(res))
    print(f"{a.out}: {len(names)} backbones" + (f", table in {a.md}" if a.md else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
