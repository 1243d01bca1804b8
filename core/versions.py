"""The versions of Python and of the packages that decide the numbers, as every artifact records them.

Reads installed package metadata. Example: python -c "from core.versions import package_versions; print(package_versions())"
"""
import platform

PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "h5py", "pillow", "scikit-learn", "ray")


def package_versions(extra=()) -> dict:
    """{'python': ..., package: version} for the installed ones of PACKAGES (and `extra`)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (*PACKAGES, *extra):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
