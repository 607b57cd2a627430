"""faultwatch benchmarks: `python -m bench fewlabel | throughput | latency | agent | all`."""
