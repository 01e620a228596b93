"""Converters from other AHN checkpoint formats into modeling_ahn repos."""
