"""Unit tests of the fleet (worker/fleet/)."""
