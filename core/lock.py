"""One writer per output: an exclusive lock on `<output>.lock`, taken by every command that writes a file or folder.

Reads and writes `<output>.lock` (a small text file: the holder's pid and command; it stays after the run, empty
of meaning once unlocked). Example: `make features` takes FEATURES.lock; a second one exits 2 at once.

The lock is `fcntl.flock`, which the kernel drops when its process dies (SIGKILL included), so a lock left by a
killed run never blocks the rerun: there is no stale-lock cleanup to get wrong. A second command on the same
output fails at once (no waiting) with the holder's pid and command. flock is per open file description, so it
also excludes a second writer inside one process. Not for NFS, where flock may be emulated or local-only.
"""
import contextlib
import fcntl
import os
import sys

from .errors import WorkflowError


class OutputBusy(WorkflowError):
    """Another live process is writing the same output."""


def lock_path(output) -> str:
    return f"{os.path.normpath(str(output))}.lock"


def _holder(f) -> str:
    f.seek(0)
    text = f.read().strip()
    return text or "pid unknown"


def _command() -> str:
    """`python -m extract --data ...` rather than the path of extract/__main__.py."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "-m " + os.path.basename(os.path.dirname(argv[0]))
    return " ".join(["python"] + argv)


@contextlib.contextmanager
def output_lock(output, what: str, fix: str = ""):
    """Hold an exclusive lock on `output` for the `with` block, or raise OutputBusy naming the holder."""
    path = lock_path(output)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(f)
        f.close()
        pid = holder.split(":")[0].removeprefix("pid ") if holder.startswith("pid ") else "<pid>"
        raise OutputBusy(f"{what}={output} is being written by another process ({holder}); wait for it to "
                         f"finish, or stop it (kill {pid}) and rerun{fix and ' ' + fix}") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}: {_command()}"[:500])
        f.flush()
        yield path
    finally:
        f.close()  # releases the flock; the file stays (removing it would race with a waiting locker)
