"""Storage: the tables (SQLAlchemy Core), the connection with its dialect settings, migrations."""
