from __future__ import annotations

from fastapi import APIRouter

from app.schemas import ModelInfo, ModelsResponse
from app.state import ModelDep

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelsResponse, summary="The served model and its metadata")
def list_models(model: ModelDep) -> ModelsResponse:
    return ModelsResponse(active=ModelInfo(**model.describe()), provider=model.detector.provider)
