"""POST /predict/{task}: rows of every concurrent request share the batcher's forwards. Native
requests (`{"inputs": [...]}`) and the Hugging Face inference shape (app.api.hf) are both taken."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api import hf
from app.api.auth import PredictTask
from app.api.deps import HubDep, SettingsDep, TaskNameDep
from app.api.edge import note_rows
from app.api.errors import InputError, check_json, data_error
from app.api.schemas import HFResponse, PredictRequest, PredictResponse, typed_prediction
from app.engine.data import DataError

router = APIRouter(tags=["predict"])


@router.post("/predict/{task}", response_model=PredictResponse | HFResponse)
async def predict(
    request: Request,
    principal: PredictTask,
    task: TaskNameDep,
    body: PredictRequest,
    hub: HubDep,
    settings: SettingsDep,
) -> Any:
    """Predictions for a batch (`inputs`: a list) in the native shape, or, for one input (a string
    or an object) or any request with `parameters`, in the Hugging Face pipeline shape."""
    inputs = hf.records(body)
    note_rows(request.scope, len(inputs))
    limit = settings.max_inputs_per_request
    if len(inputs) > limit:
        raise InputError.at(
            ["body", "inputs"], f"{len(inputs)} inputs in one request; the limit is {limit}", "too_long"
        )
    check_json(body.inputs, ["body", "inputs"])
    hf.check(body.parameters)
    single = not isinstance(body.inputs, list)
    try:
        version, predictions = await hub.predict(
            task, inputs, body.version, client=principal.key_id, overflow=hf.overflow(body.parameters)
        )
    except DataError as err:
        if single and err.line == 1:  # one input: its fields are at body.inputs.<field>
            err.line = None
        raise data_error(err, ["body", "inputs"], label=None if single else "inputs") from None
    if hf.wants_hf(body):
        return JSONResponse(hf.response(body, predictions))
    return PredictResponse(task=task, version=version, predictions=[typed_prediction(p) for p in predictions])
