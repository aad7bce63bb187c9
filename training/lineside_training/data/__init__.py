"""Torch datasets over the canonical form, and albumentations presets."""
