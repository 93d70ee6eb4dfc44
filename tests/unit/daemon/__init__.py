"""Unit tests of the daemon (worker/daemon/)."""
