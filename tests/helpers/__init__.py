"""Test helpers that are not fixtures of their own (a real local Slurm cluster, ...)."""
