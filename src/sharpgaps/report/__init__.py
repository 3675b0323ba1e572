"""The report layer (see sharpgaps/__init__.py)."""
