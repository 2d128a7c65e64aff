"""The device profile library (data files); this module only marks where it is installed."""
