"""The HTTP API: dependencies (``deps``), error translation (``errors``), streaming uploads (``upload``) and one
router per resource (``routes``). The contract is ``docs/http-api.md``."""
