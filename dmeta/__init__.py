"""dmeta: JAX research code for demand forecasting and customer analytics under scarce data."""

__version__ = "0.1.0"
