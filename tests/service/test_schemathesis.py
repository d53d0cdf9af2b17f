"""Property-based fuzzing of the API against its own OpenAPI schema (schemathesis, in process): whatever the
input — random options, random bytes as the model, odd ids and query values — the API answers with a
documented status and body, and never with a 5xx.

Jobs are handed to an executor that fails them at once, so ``?wait=`` never blocks; everything else (database,
storage, the upload path, validation, errors) is the real thing.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.core.config import Settings
from service.core.db import get_engine
from service.jobs import crud
from service.main import create_app


class InstantExecutor:
    """An executor whose "worker" fails each job the moment it is submitted."""

    name = "instant"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def submit(self, job_id: str, gpu: bool = False) -> None:
        engine = get_engine(self.settings.database_url)
        claim = crud.claim(engine, job_id, "instant", 60)
        assert claim is not None
        crud.finish_failed(engine, claim, "internal", "not run in this test")

    def resubmit(self, job_ids: list[str]) -> None:
        pass

    def ready(self) -> bool:
        return True

    def maintain(self) -> None:
        pass


@pytest.fixture
def api_schema(make_settings):
    s = make_settings(max_queued=100_000)
    app = create_app(s, executor=InstantExecutor(s))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _with_real_models(strategy: st.SearchStrategy, model: bytes) -> st.SearchStrategy:
    """Cases of POST /convert whose ``model`` is, half of the time, a real ONNX file: random bytes are always
    refused at the door (415), a real model lets random options reach validation and job creation."""

    def swap(pair: tuple[schemathesis.Case, bool]) -> schemathesis.Case:
        case, real = pair
        if real and isinstance(case.body, dict) and "model" in case.body:
            case.body = {**case.body, "model": model}
        return case

    return st.tuples(strategy, st.booleans()).map(swap)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_documented_answers(api_schema, model_files, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /convert", "GET /jobs", "GET /jobs/{job_id}",
                                               "GET /jobs/{job_id}/model", "DELETE /jobs/{job_id}", "GET /readyz"}
    model = model_files["onnx"].read_bytes()
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=mode)
        if operation.label == "POST /convert":
            strategy = _with_real_models(strategy, model)

        @given(case=strategy)
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS if mode == GenerationMode.POSITIVE else [not_a_server_error])

        try:
            check()
        except Unsatisfiable:
            # Negative data cannot be made for an operation without constraints (GET /healthz); fine.
            assert mode == GenerationMode.NEGATIVE and operation.label not in ("POST /convert", "GET /jobs")
