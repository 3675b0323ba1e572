"""The engine layer (see sharpgaps/__init__.py)."""
