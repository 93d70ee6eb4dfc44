"""Unit tests of the deploy/ artifacts: template, SSM documents, unit files, deploy.sh."""
