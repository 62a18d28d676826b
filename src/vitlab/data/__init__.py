"""Datasets, pure-torch transforms, mixing and sampling."""
