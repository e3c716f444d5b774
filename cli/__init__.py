"""The ``takedown`` command line: a thin edge that parses, calls the service and prints."""
