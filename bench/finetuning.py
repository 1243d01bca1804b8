"""The bench's fine-tuning figures: end to end against cached (`cached_finetune_speedup`), and images/s per precision.

Generates its own images and caches under the bench's work folder. Example: python -m bench --n 600
"""
import os
import time

import numpy as np

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from core.precision import building
from core.runs import epoch_clock
from extract import backbones
from extract.features import Settings, extract_features, make_plan
from finetune.cached import hold_views

RECIPE = backbones.get(backbones.DEFAULT)  # the default backbone's cached cut and feature layer
from extract.pipeline import labelled_dataset
from extract.synth import make_dataset

from .profile import flop_ceiling, gflops_per_example
from .timing import EpochTimer, median


def bench_finetune_img_s(a, cache_path, mixed: bool) -> float:
    """Images/s of an end-to-end fine-tuning epoch (stage 3's model, trainable set, compile and input pipeline) under
    the float32 or the mixed_float16 policy: train images / the median epoch after a warm-up epoch."""
    from finetune import model as fm, train

    with open_cache(cache_path) as c, building("mixed_float16" if mixed else "float32"):
        model, trunk = fm.build_full_model(c.config, fm.resolve_cache_weights(c), c.layer, c.feature_shape())
        tr = c.rows(SPLIT_TRAIN)
        ds = labelled_dataset(c.config["data"], [c.paths[i] for i in tr], c.labels[tr], a.img_size, a.batch, seed=0,
                              augment=True)
    fm.set_trainable(model, trunk, fm.unfreeze_from(c.config))
    train.compile_for_finetuning(model, 1e-5, xla=False)
    timer = EpochTimer()
    model.fit(ds, epochs=1 + a.repeats, callbacks=[timer], verbose=0, shuffle=False)  # ds shuffles itself
    return len(tr) / median(timer.seconds[1:])


def cached_finetune_speedup(work_dir, n_images: int, img_size: int, batch: int, repeats: int = 3,
                            aug_views: int = 2, xla: bool = False, precisions=("float32",),
                            mem_budget: str = "auto") -> dict:
    """Seconds of one end-to-end fine-tuning epoch from image files / seconds of one cached epoch, in one process.

    Generates `n_images` ~350x400 JPEGs in `work_dir`, caches mixed6,mixed7 with `aug_views` views (WEIGHTS=none:
    speed does not depend on the weights' values), then fits both paths for 1 + `repeats` epochs (train +
    validation, stage 3's model, trainable set and compile) and takes the median epoch after the first (tracing).
    The float32 figures keep their keys; each other precision's (the network built under its policy, as
    `make finetune PRECISION=...` trains it) go under `by_precision`. For the roofline (bench/roofline.py) it also
    returns the trained weights' count and the cached step split into its optimizer's update and the rest
    (in-memory features, Adam vs SGD). Also disk and RAM per cached view. The cached path holds its features or
    streams them as `make finetune MEM_BUDGET=mem_budget` would (`cached_data`). Leaves `work_dir` in place (main
    removes the whole scratch folder).
    """
    root, path = os.path.join(work_dir, "images"), os.path.join(work_dir, "features-mixed6.h5")
    repeats = max(1, int(repeats))  # epoch 0 (tracing) is never timed: at least one more
    make_dataset(root, n=n_images, layout="kaggle", size=(320, 420), seed=0, junk=False)  # ~350x400, as Kaggle's
    t0 = time.perf_counter()
    assert extract_features(make_plan(Settings(data=root, features=path, img_size=img_size, weights="none",
                                               batch=batch, layers=(RECIPE.cached_cut, RECIPE.feature_layer),
                                               aug_views=aug_views))) == 0
    extract_s = time.perf_counter() - t0
    with open_cache(path, need_labels=True) as cache:
        tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
        in_memory, note = hold_views(cache, RECIPE.cached_cut, tr, va, mem_budget)
        per = {p: _fit_both_paths(cache, root, tr, va, img_size, batch, repeats, xla, p, in_memory) for p in precisions}
        res = {"n_images": n_images, "n_train": len(tr), "n_val": len(va), "img_size": img_size, "batch": batch,
               "aug_views": aug_views, "xla": bool(xla), "extract_s": extract_s, "cached_data": note, **per["float32"],
               "by_precision": {p: per[p] for p in precisions if p != "float32"},
               "cached_split": _cached_optimizer_split(cache, tr, va, img_size, batch, repeats)}
        cut = RECIPE.cached_cut
        views = cache.f[f"views/{cut}"]
        n_views = views.shape[0] * views.shape[1]
        res.update({"disk_bytes_per_view": views.id.get_storage_size() / max(n_views, 1),
                    "disk_bytes_clean_row": cache.features(cut).id.get_storage_size() / max(len(cache), 1),
                    "ram_bytes_per_view": 4 * int(np.prod(cache.feature_shape(cut))),  # float32 in training
                    "cache_file_bytes": os.path.getsize(path),
                    "feature_shape": list(cache.feature_shape(cut))})
    res["flop_ceiling"] = flop_ceiling(res["gflops_per_example"]["end_to_end"], res["gflops_per_example"]["cached"],
                                       len(tr), len(va))
    return res


def _models(cache, precision: str):
    """(full model, cached model) of stage 3 built under `precision`'s policy, with a random head."""
    from finetune import model as fm
    from finetune.cached import build_cached_model

    with building(precision):
        model, trunk = fm.build_full_model(cache.config, fm.resolve_cache_weights(cache), RECIPE.feature_layer,
                                           cache.feature_shape(RECIPE.feature_layer))
    cached, _ = build_cached_model(model, trunk, RECIPE.cached_cut)  # random head: throughput is the same
    return model, cached


def _fit_both_paths(cache, root, tr, va, img_size, batch, repeats, xla, precision, in_memory) -> dict:
    """Epoch seconds of both paths at one precision, their GFLOPs per image and trained weights."""
    from finetune import train
    from finetune.cached import ViewFeeds

    model, cached = _models(cache, precision)
    train.compile_for_finetuning(model, 1e-5, xla)
    ds_tr = labelled_dataset(root, [cache.paths[i] for i in tr], cache.labels[tr], img_size, batch, seed=0,
                             augment=True)
    ds_va = labelled_dataset(root, [cache.paths[i] for i in va], cache.labels[va], img_size, batch)
    e2e = EpochTimer()
    model.fit(ds_tr, validation_data=ds_va, epochs=1 + repeats, callbacks=[e2e], verbose=0, shuffle=False)

    train.compile_for_finetuning(cached, 1e-5, xla)
    feeds = ViewFeeds(cache, RECIPE.cached_cut, tr, va, batch, 0, 1.0, in_memory)
    cac = EpochTimer()
    cached.fit(feeds.train(), validation_data=feeds.val(), epochs=1 + repeats, callbacks=[epoch_clock(feeds), cac],
               verbose=0, shuffle=False)
    out = {"end_to_end_epoch_s_runs": e2e.seconds, "cached_epoch_s_runs": cac.seconds,
           "end_to_end_epoch_s": median(e2e.seconds[1:]), "cached_epoch_s": median(cac.seconds[1:]),
           "trained_weights": int(sum(np.prod(v.shape) for v in cached.trainable_weights))}
    out["cached_finetune_speedup"] = out["end_to_end_epoch_s"] / out["cached_epoch_s"]
    if precision == "float32":  # FLOPs do not depend on the precision
        out["gflops_per_example"] = {"end_to_end": gflops_per_example(model, (img_size, img_size, 3)),
                                     "cached": gflops_per_example(cached, tuple(cached.input.shape[1:]))}
    return out


def _cached_optimizer_split(cache, tr, va, img_size, batch, repeats) -> dict:
    """The cached step on in-memory mixed6 features with Adam and with SGD (bench.stages.optimizer_epochs)."""
    from finetune.gradients import input_gradient

    from .stages import optimizer_epochs

    def build():
        cached = _models(cache, "float32")[1]
        input_gradient(cached)  # stage 3's step: compile_for_finetuning reroutes the head's input gradient too
        return cached

    sets = [(cache.read(r, RECIPE.cached_cut), cache.labels[r].astype(np.float32)[:, None]) for r in (tr, va)]
    return optimizer_epochs(build, sets, batch, 1 + repeats, lr=1e-5)
