"""DefectBench: compare anomaly localizers on textures under lighting and colour shifts."""

__version__ = "0.1.0"
