"""Icons and the style sheet, read through importlib.resources."""
