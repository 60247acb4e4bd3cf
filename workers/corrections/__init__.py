"""Corrections to Faust and aiokafka internals, one per module (see each docstring)."""
