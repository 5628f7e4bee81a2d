"""What operators run: the `rebook` CLI, `doctor`, the Prometheus exporter, the Flower launcher
and the console it serves."""
