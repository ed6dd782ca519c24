"""POST /predict/{task}: rows of every concurrent request share the batcher's forwards."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import PredictTask
from app.api.deps import HubDep, SettingsDep, TaskNameDep
from app.api.errors import InputError, check_json, data_error
from app.api.schemas import PredictRequest, PredictResponse
from app.engine.data import DataError

router = APIRouter(tags=["predict"])


@router.post("/predict/{task}", response_model=PredictResponse)
async def predict(
    principal: PredictTask, task: TaskNameDep, body: PredictRequest, hub: HubDep, settings: SettingsDep
) -> PredictResponse:
    limit = settings.max_inputs_per_request
    if len(body.inputs) > limit:
        raise InputError.at(
            ["body", "inputs"], f"{len(body.inputs)} inputs in one request; the limit is {limit}", "too_long"
        )
    check_json(body.inputs, ["body", "inputs"])
    try:
        version, predictions = await hub.predict(task, body.inputs, body.version, client=principal.key_id)
    except DataError as err:
        raise data_error(err, ["body", "inputs"], label="inputs") from None
    return PredictResponse(task=task, version=version, predictions=predictions)
