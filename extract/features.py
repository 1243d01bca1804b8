"""Stage 1 as a library: the cache's identity, the traced forward pass, and the decode -> forward -> commit loop.

Reads DATA (any supported layout). Writes FEATURES (layout in README, "The cache file") and, next to it,
`<name>.skipped.txt` listing undecodable files with their reasons.
Example: python -m extract --data data/train --features artifacts/features.h5 --img-size 150 --weights imagenet

`extract_features(make_plan(Settings(...)))` is `make features` with ENGINE=local; extract/shard.py runs the same loop
(`run_extraction`) inside each Ray worker; extract/stage.py picks between them.
"""
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from cache import (SPLIT_NONE, BackgroundCommits, CacheWriter, cache_state, fingerprint, partial_path,
                   stale_reason)
from cache.writer import damaged_path
from core import WorkflowError, precision, space
from core.files import write_text
from core.versions import package_versions

from . import backbone, backbones, ensemble, exclude, images, pipeline, relabel, splits, update, verify, views


@dataclass(frozen=True)
class Settings:
    """Everything `make features` is told (Make variables, README "Stage 1")."""

    data: str = "data/train"
    features: str = "artifacts/features.h5"
    backbone: str = backbones.DEFAULT  # BACKBONE: a name in extract/backbones.py
    backbones: str = ""  # BACKBONES=name[:size],...: several in one pass (extract/ensemble.py); wins over BACKBONE
    img_size: int = 0  # 0: the backbone's default
    layers: tuple = ()  # the first is the cache's `features`; empty: the backbone's feature layer
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
    relabel: str = ""  # RELABEL: a CSV of `path,label` rows overriding those labels (extract/relabel.py)


@dataclass(frozen=True)
class Plan:
    """One `make features` run, resolved once (make_plan) and handed down: nothing below re-resolves a setting."""

    settings: Settings
    spec: backbones.Backbone | None  # None for an ensemble: see members
    img_size: int  # the decode size (an ensemble's largest member's)
    layers: tuple
    weights_info: dict
    precision: str  # PRECISION as core.precision.resolve made it
    imgs: images.ImageSet
    sizes: tuple = ()  # each input's bytes (verify.input_sizes): its identity, and what a stale cache's line counts
    hashes: tuple = ()  # each input's sha256 under VERIFY=content (verify.content_hashes), else empty
    relabelled: tuple = ()  # RELABEL's identity in the cache's config, as (key, value) pairs (empty: none given)
    members: tuple = ()  # BACKBONES: ((spec, size), ...)
    member_weights: tuple = ()  # each member's resolved weights, in order

    @property
    def view_layers(self) -> tuple:
        return views.view_layers(self.spec)

    def describe_precision(self) -> str:
        """The log line: what PRECISION became for this backbone on this CPU, and why."""
        specs = [spec for spec, _ in self.members] if self.members else [self.spec]
        return precision.describe(self.settings.precision, self.precision, use="inference",
                                  bf16_loses=backbones.bf16_loses_among(specs))

    @property
    def title(self) -> str:
        if self.members:
            return "ensemble " + " + ".join(f"{spec.name} at {size} px" for spec, size in self.members)
        return f"{self.spec.name} ({self.spec.constructor}) at {self.img_size} px, {','.join(self.layers)}"

    def build(self):
        """The extraction model: the backbone cut at LAYERS, or the ensemble's trunk (extract/ensemble.py)."""
        if self.members:
            return ensemble.build_trunk(self.members, self.member_weights)
        return backbone.build_backbone(self.spec, self.img_size, self.layers, self.weights_info)


def make_plan(s: Settings) -> Plan:
    """Resolve BACKBONE, IMG_SIZE, LAYERS, WEIGHTS, PRECISION and DATA once; check what can be checked up front."""
    if s.backbones:
        return _ensemble_plan(s)
    spec = backbones.get(s.backbone)
    img_size = s.img_size or spec.default_size
    backbone.check_img_size(spec, img_size)
    # LAYERS empty: the feature layer, plus the cut that views and FROM_CACHE=1 read when AUG_VIEWS asks for views.
    layers = tuple(s.layers) or ((spec.feature_layer,) + (views.view_layers(spec) if s.aug_views > 0 else ()))
    imgs, relabelled = _images(s)
    check_views(s.aug_views, imgs, layers, spec)
    return Plan(s, spec, img_size, layers, backbone.resolve_weights(spec, s.weights, img_size),
                precision.resolve(s.precision, "inference", bf16_loses=spec.bf16_loses), imgs,
                *_identity(imgs, s.verify), relabelled)


def _ensemble_plan(s: Settings) -> Plan:
    if s.img_size or s.layers or s.aug_views:
        raise WorkflowError(f"BACKBONES={s.backbones}: IMG_SIZE, LAYERS and AUG_VIEWS apply to one BACKBONE; give "
                            f"each member's size as name:size (e.g. BACKBONES=inception_v3:299,resnet50:224) and "
                            f"leave those empty")
    members = ensemble.parse(s.backbones)
    infos = tuple(backbone.resolve_weights(spec, s.weights, size) for spec, size in members)
    imgs, relabelled = _images(s)
    info = ensemble.weights_record(s.weights, ensemble.records(members, infos))
    loses = backbones.bf16_loses_among(spec for spec, _ in members)
    return Plan(s, None, max(size for _, size in members), (ensemble.CONCAT_LAYER,), info,
                precision.resolve(s.precision, "inference", bf16_loses=loses), imgs, *_identity(imgs, s.verify),
                relabelled, members, infos)


def _images(s: Settings) -> tuple:
    """(DATA's images with their labels, LABELS and RELABEL applied; RELABEL's identity as (key, value) pairs)."""
    imgs = images.discover(s.data, s.labels)
    if not s.relabel:
        return imgs, ()
    imgs, identity = relabel.apply(s.relabel, imgs)
    return imgs, tuple(identity.items())


def _identity(imgs, mode: str) -> tuple:
    """(sizes, sha256s) of every input: the rows' identity (sha256 only under VERIFY=content)."""
    hashes = verify.content_hashes(imgs.root, imgs.paths) if mode == "content" else ()
    return tuple(verify.input_sizes(imgs.root, imgs.paths)), tuple(hashes)


def resolve_config(plan: Plan) -> dict:
    """Everything that determines the cache's content; its fingerprint decides up-to-date vs stale."""
    s, imgs = plan.settings, plan.imgs
    # Only when asked for: a cache without views keeps the fingerprint it had before views existed.
    aug = {"augmentation": views.policy(s.aug_views, s.seed, plan.view_layers)} if s.aug_views else {}
    # DATA's absolute path is provenance (`provenance`), not identity: a moved or copied folder stays up to date.
    # `backbone` is the constructor's name, as before the registry: InceptionV3 caches keep their fingerprint. An
    # entry with constructor arguments (a MobileNet width) adds its name and arguments (Backbone.identity).
    if plan.members:
        model = {"backbone": ensemble.ENSEMBLE, "backbones": ensemble.records(plan.members, plan.member_weights),
                 "preprocessing": "each member's own, in its branch (backbones)", "pool": ensemble.POOL}
    else:
        model = {**plan.spec.identity, "preprocessing": plan.spec.preprocessing_text}
    return with_precision({
        **model, "layer": plan.layers[0], "layers": list(plan.layers), "image_size": plan.img_size,
        "resize": images.RESIZE,
        "dtype": s.dtype, "layout": imgs.layout, "class_names": imgs.class_names, "verify": s.verify,
        "n_inputs": len(imgs.paths),
        "inputs_fingerprint": verify.inputs_fingerprint(imgs.root, imgs.paths, s.verify, plan.sizes or None,
                                                        plan.hashes),
        "val_split": s.val_split, "split_seed": s.seed, **plan.weights_info, **aug,
        **images.labels_identity(imgs), **dict(plan.relabelled),
    }, plan.precision)


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
    return state == "up-to-date"


def stale_line(features, config: dict, inputs: dict) -> str:
    """Why FEATURES is rebuilt, as the words after its name ('' for a first build)."""
    state = cache_state(features, fingerprint(config))
    if state == "stale":
        return f"stale ({stale_reason(features, config, inputs)}); rebuilding"
    return "unreadable as HDF5 (damaged?); rebuilding" if state == "unreadable" else ""


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


def check_views(aug_views: int, imgs: images.ImageSet, layers, spec):
    """AUG_VIEWS needs labelled data, a backbone with a cached cut, and the view layers among LAYERS."""
    if aug_views < 0:
        raise WorkflowError(f"AUG_VIEWS={aug_views}: must be >= 0 (0 = no augmented views), e.g. AUG_VIEWS=2")
    if not aug_views:
        return
    need = [l for l in views.view_layers(spec) if l not in layers]
    if need:
        raise WorkflowError(f"AUG_VIEWS={aug_views}: views are cached at {','.join(need)}, which "
                            f"LAYERS={','.join(layers)} leaves out; use `make features LAYERS={','.join(need)},"
                            f"{layers[0]} AUG_VIEWS={aug_views}`")
    if not imgs.labelled:
        raise WorkflowError(f"AUG_VIEWS={aug_views}: DATA={imgs.root} is unlabelled, and views are made for "
                            f"train images only; use AUG_VIEWS=0 for it")


def run_extraction(forward, layers, imgs, writer, start, img_size, batch, view_extractor=None, leave_out=()):
    """Decode -> forward -> commit every batch from input `start` on; return (cached, skipped, seconds).

    Three stages overlap: tf.data decodes the next batches in parallel, the model runs this one, and a background
    thread writes the previous ones to HDF5 (cache.BackgroundCommits). `view_extractor`
    (extract.views.ViewExtractor) adds the augmented views of the batch's images to each commit. Inputs in
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
            if view_extractor is not None:  # every row's views, val rows too (CacheWriter)
                extra["views"] = view_extractor(np.asarray(x)[:len(idx)][ok], idx[ok])
            commits.commit(idx[ok], {l: f.numpy()[ok] for l, f in zip(layers, feats)}, skipped, int(idx[-1]) + 1,
                           **extra)
            n_done += int(ok.sum())
            n_skip += len(skipped)
            bar.update(len(idx))
    bar.close()
    return n_done, n_skip, time.perf_counter() - t0


def resume_line(features, writer, start: int, n: int) -> str:
    """What `writer.start` found, as one line ('' for a fresh start with nothing to say)."""
    if writer.resumed and (start or writer.note):
        return f"{features}: resuming at input {start}/{n}" + (f" ({writer.note})" if writer.note else "")
    return f"{features}: {writer.note}" if writer.note else ""


def set_aside_if_torn(e: OSError, features):
    """A checksum failure while writing (a chunk torn outside what a resume verifies; not seen so far): set the
    partial aside and say to rerun, rather than leave a partial that every rerun fails on."""
    if "filter returned failure" not in str(e):
        return
    os.replace(partial_path(features), damaged_path(features))
    raise WorkflowError(f"{partial_path(features)}: damaged while writing ({str(e).splitlines()[0][:80]}); set aside "
                        f"as {damaged_path(features)}; rerun the same command to start over") from None


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


def extract_features(plan: Plan) -> int:
    """`make features` with ENGINE=local: resume, update, rebuild or say "up to date"; print the summary."""
    s, imgs = plan.settings, plan.imgs
    report_unmatched(s.features, imgs, s.labels)
    config = resolve_config(plan)
    excluded = []
    if s.exclude:  # only when given: without EXCLUDE the fingerprint is the one it always was
        excluded, identity = exclude.select(s.exclude, imgs)
        config.update(identity)
    config = update.adopt_views_seed(s.features, config)
    old, why = update.reusable(s.features, config, s.precision)
    split = update.split_for(plan, old)
    if old is not None:  # up to date only with the split this cache's history drew
        config.update(update.split_identity(plan, split, update.expected_rows(plan, old, excluded)))
    if up_to_date(s.features, config, s.precision, dict(zip(imgs.paths, plan.sizes))):
        if old is not None:
            old.close()
        return 0
    if old is not None:
        summary, line = update.run(plan, config, old, excluded, split)
        print(line)
    else:
        if stale := stale_line(s.features, config, dict(zip(imgs.paths, plan.sizes))):
            print(f"{s.features}: {stale}" + (f" ({why})" if why else ""))
        summary, line = write_cache(plan, imgs, s.features, config, split, excluded, plan.hashes)
        update.drop_segments(s.features)  # an updated cache's segments: the rebuilt file holds every row itself
        print(f"{s.features}: {summary.rows:,} cached, {len(summary.skipped):,} skipped "
              f"(see {os.path.splitext(str(s.features))[0]}.skipped.txt); {line}")
    write_skipped(s.features, summary.skipped)
    return 0


def write_cache(plan: Plan, imgs, out, config: dict, split, excluded=(), hashes=()) -> tuple:
    """Extract `imgs` into a complete cache at `out` (resuming its partial); return (WriteSummary, 'this run' line).
    `hashes`: the inputs' sha256 under VERIFY=content, recorded with them."""
    s, layers = plan.settings, list(plan.layers)
    print(f"{plan.title}; " + plan.describe_precision())
    with precision.building(plan.precision):
        model = plan.build()
    shapes = {l: tuple(o.shape[1:]) for l, o in zip(layers, model.outputs)}
    record = provenance(imgs, backbone.weights_digest(model), "make features", s.precision, s.labels)
    view_shapes, extractor = {}, None
    if s.aug_views:
        view_shapes = {l: shapes[l] for l in plan.view_layers}
        # A second traced function over the same layers, cut at the view layers: views skip the blocks after them.
        extractor = views.ViewExtractor(make_forward(backbone.cut(model, list(view_shapes))), view_shapes,
                                        s.aug_views, config["augmentation"]["seed"], s.batch)
    sizes = verify.input_sizes(imgs.root, imgs.paths)
    writer = CacheWriter(out, config, imgs.paths, imgs.labels, split, shapes, s.dtype, record,
                         view_shapes=view_shapes, n_views=s.aug_views, input_sizes=sizes, input_hashes=hashes)
    tmp = partial_path(out)
    needed = space.cache_bytes(len(imgs.paths), shapes, s.dtype, len(imgs.paths), view_shapes, s.aug_views)
    space.check_space(out, needed - (os.path.getsize(tmp) if os.path.exists(tmp) else 0), "FEATURES")
    try:
        start = writer.start()
        if line := resume_line(out, writer, start, len(imgs.paths)):
            print(line)
        n_done, n_skip, dt = run_extraction(make_forward(model), layers, imgs, writer, start,
                                            plan.img_size, s.batch, view_extractor=extractor, leave_out=excluded)
        reasons = exclude.commit_excluded(writer, excluded, s.exclude) if len(excluded) else None
        summary = writer.finalize(reasons)
    except OSError as e:  # a full disk mid-run: one line, the partial kept for the rerun
        space.raise_if_full(e, out, kept=tmp)
        writer.close()
        set_aside_if_torn(e, out)
        raise
    finally:
        writer.close()
    rate = (n_done + n_skip) / dt if dt > 0 else 0.0
    return summary, f"this run {n_done + n_skip:,} images in {dt:.1f}s, {rate:.1f} images/s"
