"""Unit tests of the Lambda (lambda_trigger/)."""
