"""The journey language: schemas, the YAML loader, validation rules and the frozen model.

Nothing outside this package parses journey YAML. Import the submodules you need
(``journeys.loader``, ``journeys.model``, ...); this package itself stays empty so that
``import journeys.errors`` costs nothing.
"""
