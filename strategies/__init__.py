"""Flower Strategy subclasses: the server side of each method, one module per family."""
