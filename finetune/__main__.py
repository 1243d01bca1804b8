"""Stage 3: put the stage-2 head back on the cache's backbone, prove nothing changed, fine-tune from UNFREEZE_FROM.

Reads DATA (the images the cache was built from), FEATURES (its record and val features), HEAD_DIR/head.keras and
HEAD_DIR/metrics.json. Writes MODEL_DIR/model.keras (self-contained; computes in its training
precision, PRECISION), MODEL_DIR/metrics.json, MODEL_DIR/curves.png.
Example: python -m finetune --data data/train --features artifacts/features.h5 --head-dir artifacts/head --model-dir artifacts/finetune

Killed at any moment, the same command resumes from the last finished epoch (MODEL_DIR/_work/). With the same
inputs and settings as an existing model.keras it is a quick no-op ("up to date").

Two paths write the same model.keras: end to end from the image files (default; on-the-fly augmentation, mixed
precision and several GPUs), or with `--from-cache 1` (FROM_CACHE=1) from the backbone's cached cut (mixed6 for
InceptionV3) and augmented views (finetune/cached.py; about a third of the work per step, for CPUs).
"""
import argparse

from classify.data import AUTO, resolve_budget
from core import WorkflowError, cli, precision
from core.options import add_training

from .run import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, Settings, finetune
from .train import PATIENCE


def parse_args(argv=None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/train", help="the image folder the cache was built from (DATA)")
    p.add_argument("--features", default="artifacts/features.h5", help="stage-1 cache (FEATURES)")
    p.add_argument("--head-dir", default="artifacts/head", help="stage-2 output folder (HEAD_DIR)")
    p.add_argument("--model-dir", default="artifacts/finetune", help="output folder (MODEL_DIR)")
    p.add_argument("--unfreeze-from", default="",
                   help="first layer to train; empty: the cache's backbone's default (UNFREEZE_FROM)")
    add_training(p, DEFAULT_EPOCHS, DEFAULT_BATCH, DEFAULT_LR, batch_help="images per step, all devices together",
                 seed_help="shuffle/augmentation/dropout seed")
    p.add_argument("--patience", type=int, default=PATIENCE, help="early-stopping patience in epochs")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "on", "off"],
                   help="float16 compute with float32 weights and output; auto = on iff a GPU is visible")
    p.add_argument("--precision", default="auto", choices=precision.CHOICES,
                   help="compute of the training copy and of model.keras: auto = bfloat16 where the CPU has native "
                        "bf16 and no GPU, else float32; MIXED_PRECISION on wins over it (PRECISION)")
    p.add_argument("--xla", type=int, default=0, choices=[0, 1], help="compile the train step with XLA (XLA)")
    p.add_argument("--from-cache", type=int, default=0, choices=[0, 1],
                   help="1: train the block after UNFREEZE_FROM + head on cached features and views (FROM_CACHE)")
    p.add_argument("--mem-budget", default=AUTO,
                   help="FROM_CACHE=1: auto holds the cached features and views in memory when they take at most half "
                        "of the memory free now, else streams them; or a size, e.g. 2G (MEM_BUDGET)")
    a = p.parse_args(argv)
    resolve_budget(a.mem_budget)  # a bad MEM_BUDGET fails now, not after the equivalence pass
    for name, value in (("EPOCHS", a.epochs), ("BATCH", a.batch), ("LR", a.lr)):
        if not value > 0:
            raise WorkflowError(f"{name}={value}: must be positive, e.g. EPOCHS=10 BATCH=32 LR=1e-5")
    if a.checkpoint_s < 0:
        raise WorkflowError(f"CHECKPOINT_S={a.checkpoint_s:g}: must be >= 0 (0: commit every epoch)")
    if a.patience < 0:
        raise WorkflowError(f"--patience={a.patience}: must be >= 0 (0 stops at the first epoch without progress)")
    return Settings(data=a.data, features=a.features, head_dir=a.head_dir, model_dir=a.model_dir,
                    unfreeze_from=a.unfreeze_from, epochs=a.epochs, batch=a.batch, lr=a.lr, patience=a.patience,
                    seed=a.seed, mixed_precision=a.mixed_precision, xla=bool(a.xla), from_cache=bool(a.from_cache),
                    precision=a.precision, checkpoint_s=a.checkpoint_s, tb_dir=a.tb_dir, mem_budget=a.mem_budget)


@cli
def main(argv=None):
    return finetune(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
