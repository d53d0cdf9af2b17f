"""Jobs: the database queries (``crud``), the service layer the API calls (``service``, with its ``errors``),
storage keys (``files``), metrics read from the database (``metrics``), how jobs reach workers (``executor``:
``embedded`` or ``celery_app``) and what a worker does with one (``runner``, which runs ``sandbox``)."""
