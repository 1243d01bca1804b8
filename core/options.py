"""Command-line options more than one stage takes, spelled once (their Make variables are shared too).

Reads and writes nothing. Example: python -m classify --help   # --epochs, --batch, --lr, --seed come from here
"""


def add_training(p, epochs: int, batch: int, lr: float, *, batch_help: str, seed_help: str):
    """--epochs, --batch, --lr and --seed (EPOCHS, BATCH, LR, SEED), with the stage's defaults."""
    p.add_argument("--epochs", type=int, default=epochs, help="most epochs; early stopping may end sooner (EPOCHS)")
    p.add_argument("--batch", type=int, default=batch, help=f"{batch_help} (BATCH)")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate (LR)")
    p.add_argument("--seed", type=int, default=42, help=f"{seed_help} (SEED)")
