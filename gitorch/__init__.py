"""gitorch: Kubernetes' declarative model on plain Linux servers, with the desired state only in Git."""

__version__ = "0.1.0"
