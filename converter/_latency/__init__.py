"""Measured latency: a timing harness, a persistent cache of candidate timings, candidates per layer timed in
context on the target backend, and the latency cost model the planner uses."""
