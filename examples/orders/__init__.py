"""A tiny orders service: the kind of app pytest-pgtopo is for."""
