"""The curvature layer (see sharpgaps/__init__.py)."""
