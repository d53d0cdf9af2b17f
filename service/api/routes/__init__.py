"""One router per resource: ``convert`` (uploads), ``jobs``, ``health`` (liveness, readiness, metrics)."""
