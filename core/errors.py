"""The user's errors, and the CLI wrapper that turns them into one `error:` line.

A `WorkflowError` is a user's problem (missing folder, stale cache, wrong variable): it is printed as
`error: <message>` with exit code 2 and no traceback. Anything else is a bug and keeps its traceback.
Reads and writes nothing. Example: python -c "from core import WorkflowError; raise WorkflowError('x')"
"""
import functools
import sys


class WorkflowError(Exception):
    """A problem the user can fix; the message says how."""


def _close_bars():
    """Close open tqdm bars, so that the error starts its own line instead of trailing a half-drawn bar."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def cli(main):
    """Run `main()` and exit 2 with a one-line message on WorkflowError (no traceback)."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except WorkflowError as e:
            _close_bars()
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: progress so far is committed; rerun the same command to resume",
                  file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
