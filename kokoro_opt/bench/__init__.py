"""Latency, RTF, time-to-first-audio and memory harness; server load driver."""
