"""Runs a recipe's steps with a content-hash cache and provenance."""
