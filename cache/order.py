"""The training order over cached rows: shuffled, yet read from disk a chunk at a time.

Reads and writes nothing. Example: python -c "from cache import epoch_windows; print(epoch_windows(range(10), 4, 0, 0))"
"""
import numpy as np

def epoch_windows(rows, chunk_rows: int, seed: int, epoch: int, window_chunks: int = 8):
    """One epoch's shuffled order of `rows`, as a list of index arrays, each drawn from `window_chunks` whole chunks.

    Shuffling whole chunks, then rows within a window of chunks, gives a well-mixed order that can still be read
    from disk a chunk at a time. The in-memory and the streaming training paths both follow this order, so the
    same seed gives the same batches either way. It depends only on (seed, epoch), so a resumed run continues it.
    """
    rng = np.random.default_rng([seed, epoch])
    rows = np.asarray(rows, np.int64)
    chunk_of = rows // chunk_rows
    chunks = np.unique(chunk_of)
    rng.shuffle(chunks)
    out = []
    for i in range(0, len(chunks), window_chunks):
        sel = rows[np.isin(chunk_of, chunks[i:i + window_chunks])]
        out.append(rng.permutation(sel))
    return out
