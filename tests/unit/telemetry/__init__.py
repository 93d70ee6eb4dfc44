"""Unit tests of logs, journald, CloudWatch, sd_notify (worker/telemetry/)."""
