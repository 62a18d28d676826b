"""Bridges to other libraries (optional dependencies; nothing here is imported by ``import vitlab``)."""
