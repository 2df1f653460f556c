"""fedsim: federated-optimization methods as Flower Strategy/NumPyClient pairs."""

__version__ = "0.1.0"
