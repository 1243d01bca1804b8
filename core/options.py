"""Command-line options more than one stage takes, spelled once (their Make variables are shared too).

Reads and writes nothing. Example: python -m classify --help   # --epochs, --batch, --lr, --seed come from here
"""
from .runs import DEFAULT_CHECKPOINT_S


def add_training(p, epochs: int, batch: int, lr: float, *, batch_help: str, seed_help: str):
    """--epochs, --batch, --lr, --seed, --checkpoint-s and --tb-dir (EPOCHS, BATCH, LR, SEED, CHECKPOINT_S, TB_DIR), with the stage's
    defaults."""
    p.add_argument("--epochs", type=int, default=epochs, help="most epochs; early stopping may end sooner (EPOCHS)")
    p.add_argument("--batch", type=int, default=batch, help=f"{batch_help} (BATCH)")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate (LR)")
    p.add_argument("--seed", type=int, default=42, help=f"{seed_help} (SEED)")
    p.add_argument("--checkpoint-s", type=float, default=DEFAULT_CHECKPOINT_S,
                   help="commit the resume state (_work/) at most every this many seconds and at the end; 0: every "
                        "epoch. A kill repeats at most the epochs since the last commit (CHECKPOINT_S)")
    add_tb_dir(p)


def add_tb_dir(p):
    """--tb-dir (TB_DIR): TensorBoard event files of the run's epochs; empty: none."""
    p.add_argument("--tb-dir", default="", help="write TensorBoard logs under this folder; empty: off (TB_DIR)")
