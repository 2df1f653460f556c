"""Flower NumPyClient subclasses: the client side of each method, one module per family."""
