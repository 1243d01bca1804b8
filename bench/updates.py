"""The incremental cache against a full rebuild, in one run: what each change of the data costs (`make bench`).

Reads an image folder; writes, under WORK, a folder of links to it and one cache, updated step by step. Each step is
`make features` in a fresh process (its peak RSS its own), counting the images the backbone saw.
Example: python -c "from bench.updates import updates_section as u; print(u('data/demo/train', '/tmp/u', 75, 16))"

Steps: a full extraction of every image (today's rebuild); 1% of the images removed (an update, no forward pass) and
added back (the 1% extracted alone); EXCLUDE of 131 rows, RELABEL of 50, a new SEED (no forward pass each). Targets
(issue 32): adding 1% costs at most 2% of the full extraction plus 5 s; each view change at most 5 s with 0 forward
passes; peak RSS flat in the row count (compare the figures at two sizes).
"""
import os
import shutil

from .scale import in_child

EXCLUDE_N, RELABEL_N = 131, 50


def _step(kwargs) -> dict:
    """In the child: one `make features` run; the images the backbone saw and the line it printed."""
    import contextlib
    import io

    from extract import pipeline
    from extract.features import Settings, extract_features, make_plan

    seen = [0]
    batches = pipeline.image_batches

    def counting(root, paths, size, batch, indices=None):
        seen[0] += len(paths) if indices is None else len(indices)
        return batches(root, paths, size, batch, indices)

    pipeline.image_batches = counting
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert extract_features(make_plan(Settings(**kwargs))) == 0
    lines = [l for l in out.getvalue().splitlines() if l.startswith(kwargs["features"])]
    return {"forward_images": seen[0], "line": lines[-1] if lines else ""}


def updates_section(data, work, img_size: int, batch: int) -> dict:
    """Each step's wall seconds, forward images and peak RSS, and the targets' verdicts."""
    data, work = os.path.abspath(str(data)), os.path.abspath(str(work))
    shutil.rmtree(work, ignore_errors=True)
    linked = os.path.join(work, "images")
    os.makedirs(linked)
    names = sorted(os.listdir(data))
    for name in names:
        os.link(os.path.join(data, name), os.path.join(linked, name))
    base = {"data": linked, "features": os.path.join(work, "features.h5"), "img_size": img_size, "weights": "none",
            "batch": batch, "precision": "float32"}
    steps = {}

    def step(name, **extra):
        r = in_child(_step, {**base, **extra})
        steps[name] = {"wall_s": round(r["wall_s"], 2), "peak_rss_mib": round(r["peak_rss_mib"], 1),
                       **r["result"]}

    step("full_extraction")
    held = names[::100]  # 1% of the images, spread over the sorted names
    aside = os.path.join(work, "aside")
    os.makedirs(aside)
    for name in held:
        os.replace(os.path.join(linked, name), os.path.join(aside, name))
    step("remove_1pct")
    for name in held:
        os.replace(os.path.join(aside, name), os.path.join(linked, name))
    step("add_1pct")
    n_ex, n_rel = min(EXCLUDE_N, len(names) // 10), min(RELABEL_N, len(names) // 20)
    exclude = os.path.join(work, "exclude.txt")
    with open(exclude, "w") as f:
        f.write("".join(f"{n}\n" for n in names[1::7][:n_ex]))
    step("exclude", exclude=exclude)
    relabel = os.path.join(work, "relabel.csv")
    with open(relabel, "w") as f:  # Kaggle names: the other class of each
        f.write("path,label\n" + "".join(f"{n},{'dog' if n.startswith('cat') else 'cat'}\n"
                                         for n in names[3::11][:n_rel]))
    step("relabel", exclude=exclude, relabel=relabel)
    step("new_seed", exclude=exclude, relabel=relabel, seed=7)
    full, add = steps["full_extraction"]["wall_s"], steps["add_1pct"]["wall_s"]
    views = ("exclude", "relabel", "new_seed")
    return {"images": len(names), "added": len(held), "excluded": n_ex, "relabelled": n_rel, "steps": steps,
            "add_1pct_over_full": round(add / full, 4),
            "targets": {"add_1pct_within_2pct_plus_5s": add <= 0.02 * full + 5,
                        "view_changes_within_5s": all(steps[k]["wall_s"] <= 5 for k in views),
                        "view_changes_no_forward_pass": all(steps[k]["forward_images"] == 0 for k in views),
                        "add_1pct_forward_images": steps["add_1pct"]["forward_images"] == len(held)},
            "note": "wall_s: each step's `make features` call in a fresh process, model build and tracing included "
                    "where it extracts; peak_rss_mib: that process's VmHWM"}
