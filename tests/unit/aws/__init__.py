"""Unit tests of the daemon's AWS edge (worker/aws/)."""
