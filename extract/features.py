"""Stage 1 as a library: the cache's identity, the traced forward pass, and the decode -> forward -> commit loop.

Reads DATA (any supported layout). Writes FEATURES (layout in README, "The cache file") and, next to it,
`<name>.skipped.txt` listing undecodable files with their reasons.
Example: python -m extract --data data/train --features artifacts/features.h5 --img-size 150 --weights imagenet

`extract_features(Settings(...))` is `make features` with ENGINE=local; extract/shard.py runs the same loop
(`run_extraction`) inside each Ray worker; extract/stage.py picks between them.
"""
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from cache import (SPLIT_NONE, SPLIT_TRAIN, BackgroundCommits, CacheWriter, cache_state, fingerprint, partial_path,
                   stale_reason)
from core import WorkflowError, precision, space
from core.files import write_text
from core.versions import package_versions

from . import backbone, exclude, images, pipeline, verify, views


@dataclass(frozen=True)
class Settings:
    """Everything `make features` is told (Make variables, README "Stage 1")."""

    data: str = "data/train"
    features: str = "artifacts/features.h5"
    img_size: int = 150
    layers: tuple = (backbone.FEATURE_LAYER,)  # the first is the cache's `features`
    weights: str = "imagenet"
    val_split: float = 0.2
    seed: int = 42
    batch: int = 32
    dtype: str = "float32"
    aug_views: int = 0
    engine: str = "local"
    shards: int = 2
    exclude: str = ""  # a CSV with a `path` column, or a text file of paths: left out (extract/exclude.py)
    verify: str = "size"  # the inputs' identity: relative paths + sizes, or + sha256 of every file (extract/verify.py)
    precision: str = "auto"  # the backbone's compute: auto | float32 | bfloat16 (core/precision.py); stored: DTYPE
    labels: str = ""  # LABELS: a CSV naming each image and its `label` (extract/images.py); empty: the folder's layout


def resolve_config(s: Settings, imgs: images.ImageSet, weights_info: dict, resolved: str = "", sizes=None) -> dict:
    """Everything that determines the cache's content; its fingerprint decides up-to-date vs stale.

    `resolved`: PRECISION as core.precision.resolve made it (empty: resolve s.precision here); `sizes`: the inputs'
    sizes (verify.input_sizes), when already measured."""
    # Only when asked for: a cache without views keeps the fingerprint it had before views existed.
    aug = {"augmentation": views.policy(s.aug_views, s.seed)} if s.aug_views else {}
    # DATA's absolute path is provenance (`provenance`), not identity: a moved or copied folder stays up to date.
    return with_precision({
        "backbone": backbone.BACKBONE, "layer": s.layers[0], "layers": list(s.layers), "image_size": s.img_size,
        "preprocessing": backbone.PREPROCESSING, "resize": images.RESIZE, "dtype": s.dtype,
        "layout": imgs.layout, "class_names": imgs.class_names, "verify": s.verify, "n_inputs": len(imgs.paths),
        "inputs_fingerprint": verify.inputs_fingerprint(imgs.root, imgs.paths, s.verify, sizes),
        "val_split": s.val_split, "split_seed": s.seed, **weights_info, **aug, **images.labels_identity(imgs),
    }, resolved or precision.resolve(s.precision, "inference"))


def with_precision(config: dict, resolved: str) -> dict:
    """`config` as a cache made in `resolved` records it. Only bf16 adds a key: a float32 cache keeps the fingerprint
    it had before PRECISION existed (readers take an absent key as float32)."""
    out = {k: v for k, v in config.items() if k != "precision"}
    return {**out, "precision": "bfloat16"} if resolved == "bfloat16" else out


def up_to_date(features, config: dict, requested: str, inputs: dict) -> bool:
    """Whether FEATURES already holds this cache, said in one line either way (stale: what changed).

    PRECISION=auto means "either is fine": a complete cache that matches in everything but its precision is up to
    date too, so moving between CPUs with and without native bf16 rebuilds nothing (nor, through the cache's
    fingerprint, the heads and models on it). An explicit PRECISION that differs from the cache's rebuilds it."""
    fp = fingerprint(config)
    made_in = config.get("precision", "float32")
    other = fingerprint(with_precision(config, precision.other(made_in)))
    state = cache_state(features, fp)
    if state == "stale" and requested == "auto" and cache_state(features, other) == "up-to-date":
        print(f"{features}: up to date ({config['n_inputs']} inputs, fingerprint {other[:12]}, made in "
              f"{precision.other(made_in)}, which PRECISION=auto accepts); nothing to do")
        return True
    if state == "up-to-date":
        print(f"{features}: up to date ({config['n_inputs']} inputs, fingerprint {fp[:12]}); nothing to do")
    elif state == "stale":
        print(f"{features}: stale ({stale_reason(features, config, inputs)}); rebuilding")
    elif state == "unreadable":
        print(f"{features}: unreadable as HDF5 (damaged?); rebuilding")
    return state == "up-to-date"


def provenance(imgs: images.ImageSet, digest: str, command: str, requested: str = "auto", labels: str = "") -> dict:
    """What the cache records but is not identified by: the backbone's digest, package versions, DATA's path (and
    LABELS'), the PRECISION asked for and whether this CPU has native bf16."""
    return {"backbone_digest": digest, "versions": json.dumps(package_versions()), "command": command,
            "data": os.path.abspath(imgs.root), **({"labels": os.path.abspath(labels)} if labels else {}),
            **precision.record(requested)}


def split_of(imgs: images.ImageSet, val_split: float, seed: int) -> np.ndarray:
    """The train/val split of every input (SPLIT_NONE for an unlabelled folder), drawn once over all inputs."""
    if imgs.labelled:
        return images.stratified_split(imgs.labels, val_split, seed)
    return np.full(len(imgs.paths), SPLIT_NONE, np.int8)


def make_forward(model):
    """The compiled inference call: uint8 batch in, list of float32 feature maps out (whatever the compute dtype)."""
    import tensorflow as tf

    def forward(x):
        out = model(tf.cast(x, tf.float32), training=False)
        # A bf16 backbone's maps become float32 here: the cache stores float32 (or DTYPE=float16) in any precision.
        return [tf.cast(o, tf.float32) for o in (out if isinstance(out, (list, tuple)) else [out])]

    return tf.function(forward, reduce_retracing=True)


def check_views(aug_views: int, imgs: images.ImageSet, layers):
    """AUG_VIEWS needs labelled data and the view layers among LAYERS."""
    if aug_views < 0:
        raise WorkflowError(f"AUG_VIEWS={aug_views}: must be >= 0 (0 = no augmented views), e.g. AUG_VIEWS=2")
    if not aug_views:
        return
    need = [l for l in views.VIEW_LAYERS if l not in layers]
    if need:
        raise WorkflowError(f"AUG_VIEWS={aug_views}: views are cached at {','.join(views.VIEW_LAYERS)}, which "
                            f"LAYERS={','.join(layers)} leaves out; use `make features LAYERS=mixed6,mixed7 "
                            f"AUG_VIEWS={aug_views}`")
    if not imgs.labelled:
        raise WorkflowError(f"AUG_VIEWS={aug_views}: DATA={imgs.root} is unlabelled, and views are made for "
                            f"train images only; use AUG_VIEWS=0 for it")


def run_extraction(forward, layers, imgs, writer, start, img_size, batch, view_extractor=None, leave_out=()):
    """Decode -> forward -> commit every batch from input `start` on; return (cached, skipped, seconds).

    Three stages overlap: tf.data decodes the next batches in parallel, the model runs this one, and a background
    thread writes the previous ones to HDF5 (cache.BackgroundCommits). `view_extractor`
    (extract.views.ViewExtractor) adds the augmented views of the batch's train images to each commit. Inputs in
    `leave_out` (EXCLUDE) are not read: extract.exclude records them as skipped.
    """
    from tqdm import tqdm

    t0, n_done, n_skip = time.perf_counter(), 0, 0
    bar = tqdm(total=len(imgs.paths), initial=start, desc="extract " + ",".join(layers), unit="img")
    with BackgroundCommits(writer) as commits:
        for idx, x, ok, reason in pipeline.image_batches(imgs.root, imgs.paths, img_size, batch,
                                                         np.setdiff1d(np.arange(start, len(imgs.paths)), leave_out)):
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


def write_skipped(features, skipped) -> str:
    """`<FEATURES stem>.skipped.txt`: one `path<TAB>reason` line per skipped file; returns its path."""
    path = os.path.splitext(str(features))[0] + ".skipped.txt"
    write_text(path, "".join(f"{p}\t{r}\n" for p, r in skipped))
    return path


def report_unmatched(features, imgs: images.ImageSet, labels_csv: str):
    """LABELS' rows without an image and images without a row: one line, and all of them in
    `<FEATURES stem>.unmatched.txt` (`row<TAB>path` and `image<TAB>path` lines)."""
    line = images.describe_unmatched(imgs, labels_csv)
    if not line:
        return
    path = os.path.splitext(str(features))[0] + ".unmatched.txt"
    write_text(path, "".join(f"row\t{p}\n" for p in imgs.missing) + "".join(f"image\t{p}\n" for p in imgs.unlisted))
    print(f"{line}; all listed in {path}")


def extract_features(s: Settings) -> int:
    """`make features` with ENGINE=local: check, then resume, rebuild or say "up to date"; print the summary."""
    backbone.check_img_size(s.img_size)
    imgs = images.discover(s.data, s.labels)
    report_unmatched(s.features, imgs, s.labels)
    check_views(s.aug_views, imgs, s.layers)
    split = split_of(imgs, s.val_split, s.seed)
    weights_info = backbone.resolve_weights(s.weights)
    resolved = precision.resolve(s.precision, "inference")
    sizes = verify.input_sizes(imgs.root, imgs.paths)
    config = resolve_config(s, imgs, weights_info, resolved, sizes)
    excluded = []
    if s.exclude:  # only when given: without EXCLUDE the fingerprint is the one it always was
        excluded, identity = exclude.select(s.exclude, imgs)
        config.update(identity)
    if up_to_date(s.features, config, s.precision, dict(zip(imgs.paths, sizes))):
        return 0

    print(precision.describe(s.precision, resolved, use="inference"))
    with precision.building(resolved):
        model = backbone.build_backbone(s.img_size, config["layers"], weights_info)
    shapes = {l: tuple(o.shape[1:]) for l, o in zip(config["layers"], model.outputs)}
    record = provenance(imgs, backbone.weights_digest(model), "make features", s.precision, s.labels)
    view_shapes, extractor = {}, None
    if s.aug_views:
        view_shapes = {l: shapes[l] for l in views.VIEW_LAYERS}
        # A second traced function over the same layers, cut at the view layers: views skip the blocks after them.
        extractor = views.ViewExtractor(make_forward(backbone.cut(model, list(view_shapes))), view_shapes,
                                        s.aug_views, s.seed, s.batch)
    writer = CacheWriter(s.features, config, imgs.paths, imgs.labels, split, shapes, s.dtype, record,
                         view_shapes=view_shapes, n_views=s.aug_views, input_sizes=sizes)
    tmp = partial_path(s.features)
    needed = space.cache_bytes(len(imgs.paths), shapes, s.dtype, int((split == SPLIT_TRAIN).sum()), view_shapes,
                               s.aug_views)
    space.check_space(s.features, needed - (os.path.getsize(tmp) if os.path.exists(tmp) else 0), "FEATURES")
    try:
        start = writer.start()
        if start:
            print(f"{s.features}: resuming at input {start}/{len(imgs.paths)}")
        n_done, n_skip, dt = run_extraction(make_forward(model), config["layers"], imgs, writer, start,
                                            s.img_size, s.batch, view_extractor=extractor, leave_out=excluded)
        if len(excluded):
            exclude.commit_excluded(writer, excluded, s.exclude)
        summary = writer.finalize()
    except OSError as e:  # a full disk mid-run: one line, the partial kept for the rerun
        space.raise_if_full(e, s.features, kept=tmp)
        raise
    finally:
        writer.close()
    skipped_txt = write_skipped(s.features, summary.skipped)
    rate = (n_done + n_skip) / dt if dt > 0 else 0.0
    print(f"{s.features}: {summary.rows:,} cached, {len(summary.skipped):,} skipped (see {skipped_txt}); "
          f"this run {n_done + n_skip:,} images in {dt:.1f}s, {rate:.1f} images/s")
    return 0
