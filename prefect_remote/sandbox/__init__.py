"""Emulated clouds for tests, demos and ``prefect-remote sandbox``: real clients against local servers."""
