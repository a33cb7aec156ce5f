"""Recipes of chexone-support-devices (YAML files, found through the ``chexone.recipes`` entry point)."""
