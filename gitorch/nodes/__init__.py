"""Reaching nodes: the local lab, the SSH layer and the node agent."""
