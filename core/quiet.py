"""A quiet TensorFlow start-up: the lines TF's C++ runtime prints while it loads are filtered, everything else kept.

Reads and writes nothing but the process's stderr. Installed by `import core` (every stage imports it first).
Example: python -c "import core, tensorflow" 2>&1 | wc -l   # 0 lines, with TF_ENABLE_ONEDNN_OPTS=1 too

Why: on CPUs where TensorFlow turns its oneDNN custom operations on (AVX512_VNNI/BF16, AMX: most recent ones), and
whatever TF_CPP_MIN_LOG_LEVEL, GLOG_minloglevel or ABSL_MIN_LOG_LEVEL say, `import tensorflow` writes, straight to
file descriptor 2 and before absl's logging is set up:
    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... port.cc:153] oneDNN custom operations are on. You may see slightly different numerical ...
twice (and with TF_CPP_MIN_LOG_LEVEL < 2 also cpu_feature_guard's note on instructions). They are information,
not warnings, yet a newcomer reads them as warnings (24 of them in one `make demo`), and a failing command's
`error:` line came after them. So the first `import tensorflow` of a process runs with fd 2 redirected to a
temporary file; then every captured line is written back except those info lines. Warnings (W), errors (E),
fatal lines (F), Python warnings and tracebacks come through unchanged.
"""
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# Start-up lines TF writes while loading: absl's preamble, and info-level (I) glog lines of the loader itself.
NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:.]+\s+\d+ (port|cpu_feature_guard)\.cc:\d+\] "),
    # cpu_feature_guard's message continues on a second line, without a prefix of its own
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"),
)


def is_noise(line: str) -> bool:
    """True for a start-up line of TF's loader (see module docstring); False for anything a user should see."""
    return any(p.match(line) for p in NOISE)


class _CapturingLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` with fd 2 captured, then writes back what is not start-up noise."""

    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self.real.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [l for l in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                        if not is_noise(l.rstrip("\r\n"))]
                if kept:
                    os.write(2, "".join(kept).encode())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds module `name` once, through the other finders, and hands its spec a capturing loader."""

    def __init__(self, name):
        self.name = name

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)  # once per process: only the first import loads the runtime
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _CapturingLoader(spec.loader)
        return spec


def install(name="tensorflow"):
    """Filter start-up lines from the first `import <name>` on; a no-op once it is loaded or the filter installed."""
    if name in sys.modules or any(isinstance(f, _QuietImport) and f.name == name for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport(name))
