"""`make features` on changed data: extract only the images the cache lacks, and rewrite its view in seconds.

Reads the complete cache at FEATURES and DATA. Writes one new segment (the new and changed images alone) when there
is anything to extract, then FEATURES as a front file over every segment (cache/front.py), through a rename.
Example: python -m extract --data data/train --features artifacts/features.h5 --exclude label_issues.csv

A cache has three identities (docs/updates.md):
- its *features*: the backbone or ensemble, the weights, the image size, resize, layers, views, an explicit
  PRECISION and dtype. A change rebuilds every row, as before;
- each *row*: the image's relative path and size (and sha256 under VERIFY=content);
- the *view* over the rows: labels, class names, the split, EXCLUDE and RELABEL.
So a new image is extracted alone, a removed one loses its row without a forward pass, a changed one (same path,
other bytes) is extracted again, and EXCLUDE, LABELS, RELABEL, VAL_SPLIT and SEED rewrite the view without any
forward pass.
"""
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from cache import SPLIT_NONE, SPLIT_VAL, open_cache
from cache.front import change_log, row_sources, segment_path, write_front
from core import WorkflowError
from core.files import fingerprint

from . import exclude, images, splits

# Config keys that are the view (labels, classes, split, exclusions) or the rows (which files): everything else is
# the features' identity, whose change rebuilds every row.
VIEW_KEYS = ("layout", "class_names", "val_split", "split_seed", "labels_fingerprint", "exclude", "relabel",
             "split_fingerprint")
ROW_KEYS = ("verify", "n_inputs", "inputs_fingerprint")


def feature_identity(config: dict) -> dict:
    """The part of a cache's config that decides each row's features (precision aside: see `compatible`). The views'
    seed is not part of it: views drawn with another seed are views all the same (see `adopt_views_seed`)."""
    out = {k: v for k, v in config.items() if k not in VIEW_KEYS + ROW_KEYS + ("precision",)}
    if "augmentation" in out:
        out["augmentation"] = {k: v for k, v in out["augmentation"].items() if k != "seed"}
    return out


def adopt_views_seed(features, config: dict) -> dict:
    """`config` with the views' seed of the cache at FEATURES where it can keep that cache's rows: SEED then redraws
    the split alone, and the new images' views are drawn as the old ones were (extract/views.py)."""
    if "augmentation" not in config or not os.path.exists(features):
        return config
    try:
        with open_cache(features) as cache:
            old = json.loads(cache.f.attrs["config"])
    except WorkflowError:
        return config
    if "augmentation" in old and feature_identity(old) == feature_identity(config):
        return {**config, "augmentation": {**config["augmentation"], "seed": old["augmentation"]["seed"]}}
    return config


def compatible(old: dict, new: dict, requested: str) -> bool:
    """Whether the rows of a cache made with config `old` serve config `new`: the same features' identity, and the
    same precision unless PRECISION=auto (which accepts either, as `up_to_date` does)."""
    same_precision = requested == "auto" or old.get("precision", "float32") == new.get("precision", "float32")
    return same_precision and feature_identity(old) == feature_identity(new)


def reusable(features, config: dict, requested: str) -> tuple:
    """(the complete cache at FEATURES, '') if an update can keep its rows; else (None, why it is rebuilt: '' where
    the stale line says it all, e.g. another backbone)."""
    if not os.path.exists(features):
        return None, ""
    try:
        cache = open_cache(features)
    except WorkflowError:
        return None, ""
    why = ""
    if not compatible(json.loads(cache.f.attrs["config"]), config, requested):  # as recorded (the reader adds keys)
        why = "-"
    elif cache.view_layers and not cache.views_every_row:
        why = "its views cover train rows only (written before updates existed), so it is rebuilt once"
    elif config.get("verify") == "content" and "sha256" not in cache.f.get("inputs", {}):
        why = "it records no sha256 of its files (written before updates existed), so it is rebuilt once"
    if why:
        cache.close()
        return None, "" if why == "-" else why
    return cache, ""


@dataclass
class Diff:
    """The cache against DATA now: what it can keep, and what the backbone must see."""

    segments: list  # the segment files, as the front file lists them
    live: dict  # {relative path: (segment, row)} of every image whose stored features are still its own
    kept_skips: dict  # {relative path: reason} of undecodable images with the same bytes: not decoded again
    todo: list  # relative paths to extract: new, or changed (same path, other bytes)
    had: dict  # {relative path: (size, sha256 or None)} of every input the cache was built from
    now: dict  # the same for DATA now


def split_for(plan, cache) -> np.ndarray:
    """The split of every input: `cache`'s extended (splits.extend) while VAL_SPLIT and SEED are the same, else the
    fresh one (extract/images.stratified_split, as a first build draws it)."""
    from .features import split_of

    s, imgs = plan.settings, plan.imgs
    if (cache is None or not imgs.labelled or cache.config.get("val_split") != s.val_split
            or cache.config.get("split_seed") != s.seed):
        return split_of(imgs, s.val_split, s.seed)
    old = dict(zip(cache.paths, cache.split.tolist()))
    return splits.extend(imgs.labels, imgs.paths, s.val_split, s.seed,
                         np.array([old.get(p, splits.NEW) for p in imgs.paths], np.int8))


def split_identity(plan, split, rows) -> dict:
    """A split that updates drew is the cache's identity too (two histories, one config, two splits): the config
    records a fingerprint of the val images among its `rows` (input indices). A split that equals the fresh one on
    those rows adds nothing (it follows from VAL_SPLIT and SEED), so a cache never updated keeps its fingerprint."""
    from .features import split_of

    s = plan.settings
    rows = np.asarray(rows, np.int64)
    if not len(rows) or (split[rows] == split_of(plan.imgs, s.val_split, s.seed)[rows]).all():
        return {}
    return {"split_fingerprint": fingerprint([plan.imgs.paths[i] for i in rows if split[i] == SPLIT_VAL])}


def expected_rows(plan, cache, excluded) -> list:
    """The inputs an update would keep as rows, as far as is known before extracting: not excluded, and not an
    undecodable file the cache already skipped (what is new is assumed decodable; `run` then uses the real rows)."""
    undecodable = {p for p, why in (cache.skipped if cache is not None else ())
                   if not why.startswith(exclude.REASON_PREFIX)}
    out = set(int(i) for i in excluded)
    return [i for i, p in enumerate(plan.imgs.paths) if i not in out and p not in undecodable]


def run(plan, config: dict, cache, excluded, split) -> tuple:
    """Update `cache` (open, complete, `reusable`) to `config`, leaving out the inputs `excluded` (EXCLUDE), with
    `split` (every input's, `split_for`); return (WriteSummary, the line that says what happened)."""
    s, imgs = plan.settings, plan.imgs
    excluded = {imgs.paths[int(i)] for i in excluded}
    d = diff(plan, cache, excluded)
    seconds, new_skips = extract_new(plan, config, d)
    rows = [i for i, p in enumerate(imgs.paths) if p not in excluded and p in d.live]  # input order
    paths, labels = [imgs.paths[i] for i in rows], np.asarray(imgs.labels[rows], np.int8)
    config = {k: v for k, v in config.items() if k != "split_fingerprint"}
    config.update(split_identity(plan, split, rows))  # over the rows the view really holds
    view = {"paths": paths, "labels": labels, "split": np.asarray(split[rows], np.int8),
            "skipped": sorted([(p, exclude.reason(s.exclude)) for p in excluded] + list(d.kept_skips.items())
                              + [tuple(x) for x in new_skips])}
    counts = _counts(cache, imgs, d, view, excluded, new_skips)
    fp = fingerprint(config)
    changes = change_log(cache) + [{"from": cache.fingerprint, "to": fp,
                              "counts": {k: v for k, v in counts.items() if k != "kept"}}]
    record = {**cache.provenance, "command": "make features (update)", "data": os.path.abspath(imgs.root)}
    if "store" not in cache.f and "shard_files" not in cache.f.attrs:
        _link_first_segment(cache.path, d.segments[0]["file"])
    cache.close()
    summary = write_front(s.features, config, fp, record, d.segments, d.live, view,
                          (imgs.paths, list(plan.sizes), list(plan.hashes)), changes)
    line = (f"{s.features}: {counts['kept']:,} rows kept, {counts['new']:,} new, {counts['changed']:,} changed "
            f"(extracted in {seconds:.1f} s), {counts['excluded']:,} excluded, {counts['removed']:,} removed, "
            f"{counts['labels changed']:,} labels changed")
    return summary, line


def diff(plan, cache, excluded: set) -> Diff:
    """What `cache` holds that DATA still has, by row identity: relative path, byte size, and sha256 under
    VERIFY=content."""
    imgs = plan.imgs
    segments, store = row_sources(cache)
    had = dict(zip(cache.input_paths(), _recorded(cache)))
    now = dict(zip(imgs.paths, zip(plan.sizes, plan.hashes or [None] * len(imgs.paths))))
    same = {p for p, (size, sha) in now.items() if p in had and had[p][0] == size and sha in (None, had[p][1])}
    live = {p: loc for p, loc in store.items() if p in same}
    kept_skips = {p: why for p, why in cache.skipped if p in same and not why.startswith(exclude.REASON_PREFIX)}
    todo = [p for p in imgs.paths if p not in excluded and p not in live and p not in kept_skips]
    return Diff(segments, live, kept_skips, todo, had, now)


def extract_new(plan, config: dict, d: Diff) -> tuple:
    """Extract `d.todo` alone into a new segment, adding it to `d`; return (seconds, [(path, reason)] skipped).
    The only forward passes of an update."""
    from .features import write_cache

    if not d.todo:
        return 0.0, []
    s, imgs = plan.settings, plan.imgs
    t0, k = time.perf_counter(), len(d.segments)
    index = {p: i for i, p in enumerate(imgs.paths)}
    part = images.ImageSet(imgs.root, imgs.layout, list(d.todo), imgs.labels[[index[p] for p in d.todo]],
                           imgs.class_names)
    seg_config = {**config, "n_inputs": len(d.todo), "segment_of": os.path.basename(str(s.features)),
                  "inputs_fingerprint": fingerprint([[p, *d.now[p]] for p in d.todo])}
    hashes = [d.now[p][1] for p in d.todo] if plan.hashes else ()
    summary, _ = write_cache(plan, part, segment_path(s.features, k), seg_config,
                             np.full(len(d.todo), SPLIT_NONE, np.int8), hashes=hashes)
    with open_cache(summary.path) as c:
        d.live.update({p: (k, r) for r, p in enumerate(c.paths)})
    d.segments = d.segments + [{"file": os.path.basename(summary.path), "fingerprint": fingerprint(seg_config),
                                "rows": summary.rows}]
    return time.perf_counter() - t0, list(summary.skipped)


def _counts(cache, imgs, d: Diff, view: dict, excluded: set, new_skips) -> dict:
    extracted = set(d.todo) - {p for p, _ in new_skips}
    changed = sum(p in d.had for p in extracted)
    was = dict(zip(cache.paths, cache.labels.tolist()))

    def name(names, y):
        return names[int(y)] if y >= 0 else None

    relabelled = sum(p in was and name(cache.class_names, was[p]) != name(imgs.class_names, y)
                     for p, y in zip(view["paths"], view["labels"]))
    return {"kept": len(view["paths"]) - len(extracted), "new": len(extracted) - changed, "changed": changed,
            "excluded": len(excluded), "removed": len(set(d.had) - set(d.now)), "labels changed": relabelled}


def _recorded(cache) -> list:
    """(size, sha256 or None) of every input the cache records, in input order."""
    f = cache.f
    n = len(cache.input_paths())
    sizes = f["inputs/size"][:].tolist() if "inputs" in f else [None] * n
    hashes = [h.decode() for h in f["inputs/sha256"][:]] if "inputs/sha256" in f else [None] * n
    return list(zip(sizes, hashes))



def drop_segments(features):
    """Remove the segment files of the cache that a full rebuild just replaced at FEATURES."""
    import glob

    for path in glob.glob(glob.escape(os.path.splitext(str(features))[0]) + ".seg-[0-9][0-9][0-9][0-9].h5*"):
        os.remove(path)


def _link_first_segment(features, name):
    """The single-file cache becomes segment 0 under a second name (a hard link: no copy, and FEATURES itself stays
    readable until the front file replaces it)."""
    target = os.path.join(os.path.dirname(os.path.abspath(features)), name)
    if os.path.exists(target):
        if os.path.samefile(target, features):
            return
        os.remove(target)  # a stale segment 0 of an earlier cache at this path
    os.link(features, target)

