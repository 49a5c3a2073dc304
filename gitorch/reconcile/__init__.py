"""The reconcile layer: scheduling, planning and executing changes on the cluster."""
