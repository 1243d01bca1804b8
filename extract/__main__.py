"""Stage 1: run a frozen backbone (BACKBONE) once over an image folder and cache its feature maps in one HDF5 file.

Reads: DATA (any supported layout). Writes: FEATURES (layout in README, "The cache file") and, next to it,
`<name>.skipped.txt` listing undecodable files with reasons.
Example: python -m extract --data data/train --features artifacts/features.h5 --img-size 150 --weights imagenet

Killed at any moment, the same command resumes from the last committed batch. With the same configuration and
input files it is a quick no-op ("up to date"); any change rebuilds the cache.

With `--aug-views K` (AUG_VIEWS) it also caches K deterministic augmented views of every train image at the
backbone's cached cut (extract/views.py) for cached fine-tuning: python -m extract --aug-views 2 ...
"""
import argparse

from core import WorkflowError, cli, precision
from extract import backbones, verify
from extract.features import Settings
from extract.stage import run


def parse_args(argv=None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m extract", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/train", help="image folder (DATA)")
    p.add_argument("--features", default="artifacts/features.h5", help="cache file to write (FEATURES)")
    p.add_argument("--backbone", default=backbones.DEFAULT, choices=list(backbones.REGISTRY),
                   help="the network, from extract/backbones.py (BACKBONE)")
    p.add_argument("--backbones", default="",
                   help="several in one pass, name[:size],... e.g. inception_v3,xception,resnet50; each image is "
                        "decoded once at the largest size, and the cache holds their concatenated pooled features "
                        "(BACKBONES; train it with HEAD=concat)")
    p.add_argument("--img-size", type=int, default=0,
                   help="square input size; 0 or empty: the backbone's default (IMG_SIZE)")
    p.add_argument("--layers", default="",
                   help="comma-separated layer names to cache in one pass; the first is `features`; empty: the "
                        "backbone's feature layer (LAYERS)")
    p.add_argument("--weights", default="imagenet", help="imagenet | path/to/weights.h5 | none (WEIGHTS)")
    p.add_argument("--val-split", type=float, default=0.2, help="validation fraction, stratified (VAL_SPLIT)")
    p.add_argument("--seed", type=int, default=42, help="split seed (SEED)")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass (BATCH)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored dtype (DTYPE)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: one process; ray: shards on Ray workers, RAY_ADDRESS or a local Ray (ENGINE)")
    p.add_argument("--shards", type=int, default=2, help="shard files with --engine ray (SHARDS)")
    p.add_argument("--aug-views", type=int, default=0,
                   help="also cache K augmented views of each train image at the backbone's cached cut "
                        "(AUG_VIEWS; 0 = none)")
    p.add_argument("--verify", default="size", choices=verify.MODES,
                   help="input identity: relative paths + sizes, or + sha256 of every file (VERIFY)")
    p.add_argument("--precision", default="auto", choices=precision.CHOICES,
                   help="backbone compute: auto = bfloat16 where the CPU has native bf16, else float32; features are "
                        "stored as DTYPE either way (PRECISION)")
    p.add_argument("--labels", default="", help="a CSV with a column naming each image (path relative to DATA, or "
                                                "its file stem) and a `label` column; empty: labels from DATA's "
                                                "layout (LABELS)")
    p.add_argument("--exclude", default="", help="leave out the images listed in this CSV (`path` column) or text "
                                                 "file, e.g. make report's label_issues.csv (EXCLUDE)")
    p.add_argument("--relabel", default="", help="a CSV of `path,label` rows overriding those images' labels, e.g. "
                                                 "make report's label_fixes.csv (RELABEL)")
    a = p.parse_args(argv)
    layers = tuple(l.strip() for l in a.layers.split(",") if l.strip())  # empty: the backbone's (extract/features)
    if a.batch < 1:
        raise WorkflowError(f"BATCH={a.batch}: must be at least 1, e.g. BATCH=32")
    if a.aug_views and a.engine != "local":  # the shard writers store no views (yet)
        raise WorkflowError(f"AUG_VIEWS={a.aug_views}: not available with ENGINE={a.engine}; use ENGINE=local")
    if a.backbones and a.engine != "local":
        raise WorkflowError(f"BACKBONES={a.backbones}: not available with ENGINE={a.engine} yet; use ENGINE=local")
    if a.exclude and a.engine != "local":
        raise WorkflowError(f"EXCLUDE={a.exclude}: not available with ENGINE={a.engine} yet; use ENGINE=local")
    for name, value in (("LABELS", a.labels), ("RELABEL", a.relabel)):
        if value and a.engine != "local":
            raise WorkflowError(f"{name}={value}: not available with ENGINE={a.engine} yet; use ENGINE=local")
    # SHARDS is checked against the number of images by extract.shard.run_sharded
    return Settings(data=a.data, features=a.features, backbone=a.backbone, backbones=a.backbones,
                    img_size=a.img_size, layers=layers, weights=a.weights,
                    val_split=a.val_split, seed=a.seed, batch=a.batch, dtype=a.dtype, aug_views=a.aug_views,
                    engine=a.engine, shards=a.shards, exclude=a.exclude,
                    verify=a.verify, precision=a.precision, labels=a.labels, relabel=a.relabel)


@cli
def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
