"""The service's foundations: settings, database, storage, auth and metrics. Nothing here knows about HTTP
routes or how a job is executed."""
