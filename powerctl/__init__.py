"""powerctl: a behind-the-meter microgrid power controller for modular AI compute sites."""

__version__ = "0.1.0"
