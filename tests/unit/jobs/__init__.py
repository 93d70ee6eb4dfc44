"""Unit tests of the job model (worker/jobs/)."""
