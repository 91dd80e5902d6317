"""A self-hosted private AI appliance."""

__version__ = "0.1.0"
