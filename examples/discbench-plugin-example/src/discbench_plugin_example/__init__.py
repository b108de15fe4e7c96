"""An example third-party discbench plugin package: one loss, ``cosine_hint``, registered by entry point."""

from discbench_plugin_example.cosine import CosineHint

__all__ = ["CosineHint"]
