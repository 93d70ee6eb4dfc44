"""Unit tests of running one job (worker/runner/)."""
