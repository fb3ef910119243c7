"""Local OpenAI-compatible streaming TTS server built on the runtime."""
