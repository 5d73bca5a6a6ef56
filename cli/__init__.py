"""The ``journeys`` command line. Thin: it parses arguments and calls the packages."""
