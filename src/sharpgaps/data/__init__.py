"""The data layer (see sharpgaps/__init__.py)."""
