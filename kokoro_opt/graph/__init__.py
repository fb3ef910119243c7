"""ONNX utilities shared by passes: load/save, restore, inspect, node selection."""
