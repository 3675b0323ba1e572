"""The core layer (see sharpgaps/__init__.py)."""
