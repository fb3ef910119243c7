"""Streaming TTS runtime: G2P, tokenizer, voices, ORT sessions and the synthesizer."""
