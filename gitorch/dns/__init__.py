"""Cluster DNS: Kubernetes DNS-based service discovery for gitorch services."""
