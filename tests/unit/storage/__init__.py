"""Unit tests of the object store (worker/storage/)."""
