"""Test infrastructure that needs real system services (a one-node SLURM cluster).

Lives in the package, not under tests/, so that the runbook and CI can start the very same
cluster the integration tests use (``python -m anatplane_dist.testing.slurm_cluster``).
"""
