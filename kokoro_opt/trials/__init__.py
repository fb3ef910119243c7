"""Trials: build several variants of a model with a pass, measure each, and recommend one.

A trial sits above the passes (it builds models with them) and beside the evidence tools (it
measures with `kokoro_opt.quality` and writes a `kokoro_opt.report` Report).
"""
