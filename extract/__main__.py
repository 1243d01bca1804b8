"""Stage 1: run the frozen InceptionV3 once over an image folder and cache its feature maps in one HDF5 file.

Reads: DATA (any supported layout). Writes: FEATURES (layout in README, "The cache file") and, next to it,
`<name>.skipped.txt` listing undecodable files with reasons.
Example: python -m extract --data data/train --features artifacts/features.h5 --img-size 150 --weights imagenet

Killed at any moment, the same command resumes from the last committed batch. With the same configuration and
input files it is a quick no-op ("up to date"); any change rebuilds the cache.

With `--aug-views K` (AUG_VIEWS) it also caches K deterministic augmented views of every train image at mixed6
(extract/views.py) for cached fine-tuning: python -m extract --layers mixed6,mixed7 --aug-views 2 ...
"""
import argparse
import json
import os
import platform
import time

import numpy as np

from cache import BackgroundCommits, CacheWriter, SPLIT_NONE, SPLIT_TRAIN, WorkflowError, cache_state, cli, fingerprint
from extract import backbone, images, views


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m extract", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/train", help="image folder (DATA)")
    p.add_argument("--features", default="artifacts/features.h5", help="cache file to write (FEATURES)")
    p.add_argument("--img-size", type=int, default=150, help="square input size, >= 75 (IMG_SIZE)")
    p.add_argument("--layers", default=backbone.FEATURE_LAYER,
                   help="comma-separated layer names to cache in one pass; the first is `features` (LAYER)")
    p.add_argument("--weights", default="imagenet", help="imagenet | path/to/weights.h5 | none (WEIGHTS)")
    p.add_argument("--val-split", type=float, default=0.2, help="validation fraction, stratified (VAL_SPLIT)")
    p.add_argument("--seed", type=int, default=42, help="split seed (SEED)")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass (BATCH)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored dtype (DTYPE)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: one process; ray: shards on Ray workers, RAY_ADDRESS or a local Ray (ENGINE)")
    p.add_argument("--shards", type=int, default=2, help="shard files with --engine ray (SHARDS)")
    p.add_argument("--aug-views", type=int, default=0,
                   help=f"also cache K augmented views of each train image at {','.join(views.VIEW_LAYERS)} "
                        f"(AUG_VIEWS; 0 = none)")
    a = p.parse_args(argv)
    if not [l for l in a.layers.split(",") if l.strip()]:
        raise WorkflowError(f"LAYERS={a.layers!r}: name at least one layer, e.g. LAYERS=mixed7")
    if a.batch < 1:
        raise WorkflowError(f"BATCH={a.batch}: must be at least 1, e.g. BATCH=32")
    return a  # SHARDS is checked against the number of images by extract.shard.run_sharded


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "h5py", "pillow", "scikit-learn", "ray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def resolve_config(a, imgs: images.ImageSet, weights_info: dict) -> dict:
    """Everything that determines the cache's content; its fingerprint decides up-to-date vs stale."""
    layers = [l.strip() for l in a.layers.split(",") if l.strip()]
    # Only when asked for: a cache without views keeps the fingerprint it had before views existed.
    aug = {"augmentation": views.policy(a.aug_views, a.seed)} if getattr(a, "aug_views", 0) else {}
    return {
        "backbone": backbone.BACKBONE, "layer": layers[0], "layers": layers, "image_size": a.img_size,
        "preprocessing": backbone.PREPROCESSING, "resize": images.RESIZE, "dtype": a.dtype,
        "data": os.path.abspath(imgs.root), "layout": imgs.layout, "class_names": imgs.class_names,
        "n_inputs": len(imgs.paths), "inputs_fingerprint": imgs.files_fingerprint(),
        "val_split": a.val_split, "split_seed": a.seed, **weights_info, **aug,
    }


def make_forward(model):
    """The compiled inference call: uint8 batch in, list of feature maps out."""
    import tensorflow as tf

    def forward(x):
        out = model(tf.cast(x, tf.float32), training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return tf.function(forward, reduce_retracing=True)


def check_views(a, imgs: images.ImageSet, layers):
    """AUG_VIEWS needs labelled data and the view layers among LAYERS."""
    if a.aug_views < 0:
        raise WorkflowError(f"AUG_VIEWS={a.aug_views}: must be >= 0 (0 = no augmented views), e.g. AUG_VIEWS=2")
    if not a.aug_views:
        return
    need = [l for l in views.VIEW_LAYERS if l not in layers]
    if need:
        raise WorkflowError(f"AUG_VIEWS={a.aug_views}: views are cached at {','.join(views.VIEW_LAYERS)}, which "
                            f"LAYERS={','.join(layers)} leaves out; use `make features LAYERS=mixed6,mixed7 "
                            f"AUG_VIEWS={a.aug_views}`")
    if not imgs.labelled:
        raise WorkflowError(f"AUG_VIEWS={a.aug_views}: DATA={imgs.root} is unlabelled, and views are made for "
                            f"train images only; use AUG_VIEWS=0 for it")


def run_extraction(forward, layers, imgs, writer, start, img_size, batch, view_extractor=None):
    """Decode -> forward -> commit every batch from input `start` on; return (cached, skipped, seconds).

    Three stages overlap: tf.data decodes the next batches in parallel, the model runs this one, and a background
    thread writes the previous ones to HDF5 (cache.BackgroundCommits). `view_extractor`
    (extract.views.ViewExtractor) adds the augmented views of the batch's train images to each commit.
    """
    from tqdm import tqdm

    t0, n_done, n_skip = time.perf_counter(), 0, 0
    bar = tqdm(total=len(imgs.paths), initial=start, desc="extract " + ",".join(layers), unit="img")
    with BackgroundCommits(writer) as commits:
        for idx, x, ok, reason in images.image_dataset(imgs.root, imgs.paths, img_size, batch,
                                                       np.arange(start, len(imgs.paths))):
            idx, ok = idx.numpy(), ok.numpy()
            if len(idx) < batch:  # pad the last batch: a new shape would retrace the whole graph (~5 s on a CPU)
                x = np.concatenate([x.numpy(), np.zeros((batch - len(idx),) + tuple(x.shape[1:]), np.uint8)])
            feats = [f[:len(idx)] for f in forward(x)]
            skipped = [(int(i), r.decode()) for i, good, r in zip(idx, ok, reason.numpy()) if not good]
            for i, r in skipped:
                tqdm.write(f"skipped {imgs.paths[i]}: {r}")
            extra = {}
            if view_extractor is not None:  # train rows only, in row order: what CacheWriter.commit expects
                train = ok & (writer.split[idx] == SPLIT_TRAIN)
                extra["views"] = view_extractor(np.asarray(x)[:len(idx)][train], idx[train])
            commits.commit(idx[ok], {l: f.numpy()[ok] for l, f in zip(layers, feats)}, skipped, int(idx[-1]) + 1,
                           **extra)
            n_done += int(ok.sum())
            n_skip += len(skipped)
            bar.update(len(idx))
    bar.close()
    return n_done, n_skip, time.perf_counter() - t0


@cli
def main(argv=None):
    a = parse_args(argv)
    if a.aug_views and a.engine != "local":  # the shard writers store no views (yet)
        raise WorkflowError(f"AUG_VIEWS={a.aug_views}: not available with ENGINE={a.engine}; use ENGINE=local")
    if a.engine == "ray":
        from extract.shard import run_sharded  # Ray is an optional extra: imported only when asked for

        run_sharded(a)
        return 0
    backbone.check_img_size(a.img_size)
    imgs = images.discover(a.data)
    check_views(a, imgs, [l.strip() for l in a.layers.split(",") if l.strip()])
    split = (images.stratified_split(imgs.labels, a.val_split, a.seed) if imgs.labelled
             else np.full(len(imgs.paths), SPLIT_NONE, np.int8))
    weights_info = backbone.resolve_weights(a.weights)
    config = resolve_config(a, imgs, weights_info)
    fp = fingerprint(config)
    state = cache_state(a.features, fp)
    if state == "up-to-date":
        print(f"{a.features}: up to date ({len(imgs.paths)} inputs, fingerprint {fp[:12]}); nothing to do")
        return 0
    if state == "stale":
        print(f"{a.features}: stale (configuration or input files changed); rebuilding")
    elif state == "unreadable":
        print(f"{a.features}: unreadable as HDF5 (damaged?); rebuilding")

    model = backbone.build_backbone(a.img_size, config["layers"], weights_info)
    shapes = {l: tuple(o.shape[1:]) for l, o in zip(config["layers"], model.outputs)}
    provenance = {"backbone_digest": backbone.weights_digest(model), "versions": json.dumps(package_versions()),
                  "command": "make features"}
    view_shapes, extractor = {}, None
    if a.aug_views:
        view_shapes = {l: shapes[l] for l in views.VIEW_LAYERS}
        # A second traced function over the same layers, cut at the view layers: views skip the blocks after them.
        extractor = views.ViewExtractor(make_forward(backbone.cut(model, list(view_shapes))), view_shapes,
                                        a.aug_views, a.seed, a.batch)
    writer = CacheWriter(a.features, config, imgs.paths, imgs.labels, split, shapes, a.dtype, provenance,
                         view_shapes=view_shapes, n_views=a.aug_views)
    try:
        start = writer.start()
        if start:
            print(f"{a.features}: resuming at input {start}/{len(imgs.paths)}")
        n_done, n_skip, dt = run_extraction(make_forward(model), config["layers"], imgs, writer, start,
                                            a.img_size, a.batch, view_extractor=extractor)
        summary = writer.finalize()
    finally:
        writer.close()
    skipped_txt = os.path.splitext(a.features)[0] + ".skipped.txt"
    with open(skipped_txt, "w") as f:
        f.writelines(f"{p}\t{r}\n" for p, r in summary.skipped)
    rate = (n_done + n_skip) / dt if dt > 0 else 0.0
    print(f"{a.features}: {summary.rows:,} cached, {len(summary.skipped):,} skipped (see {skipped_txt}); "
          f"this run {n_done + n_skip:,} images in {dt:.1f}s, {rate:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
