"""Alembic migrations of the service's database; ``sepconv migrate`` runs them (config built in ``service.core.db``)."""
