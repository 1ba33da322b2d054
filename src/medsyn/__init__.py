"""medsyn: synthetic medical images that can be shared in place of patient data."""

__version__ = "0.1.0"
