"""Model store: the cache folder, pulling the real Kokoro-82M offline, resolving MODEL arguments."""
