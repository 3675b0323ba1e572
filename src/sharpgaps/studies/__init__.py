"""The studies layer (see sharpgaps/__init__.py)."""
