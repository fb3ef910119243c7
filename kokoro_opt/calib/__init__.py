"""Calibration corpora and phonemized feeds for static quantization."""
