"""Fidelity measures: offline ASR word error rate and aligned spectral distances."""
