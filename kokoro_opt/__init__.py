"""kokoro-opt: make Kokoro-82M small and fast without making it sound worse."""

__version__ = "0.1.0"
