"""The pipeline layer (see sharpgaps/__init__.py)."""
