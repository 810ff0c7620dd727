"""Liveness and readiness (both exempt from auth)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..providers import configuration_problem
from ..state import AppState, get_state

router = APIRouter(prefix="/api", tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    provider: str
    reasons: list[str] = []


@router.get("/health", summary="Liveness: the process serves HTTP")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    summary="Readiness: provider configured, data dir writable, Redis answering",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `reasons` says why"}},
)
async def ready(state: Annotated[AppState, Depends(get_state)]) -> JSONResponse:
    reasons = [
        reason
        for reason in (
            configuration_problem(state.settings),
            await asyncio.to_thread(state.store.not_writable_reason),
            await state.queue.not_ready_reason(),
        )
        if reason is not None
    ]
    body = Readiness(
        status="unavailable" if reasons else "ready",
        provider=state.settings.provider,
        reasons=reasons,
    )
    return JSONResponse(body.model_dump(), status_code=503 if reasons else 200)
