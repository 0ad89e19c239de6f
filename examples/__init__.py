"""Runnable examples of gatewayz-metrics: the demo gateway, the operations kit's configuration."""
