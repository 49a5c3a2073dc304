"""gitorch: Kubernetes' declarative model on plain Linux servers, with the desired state only in Git."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gitorch")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"
