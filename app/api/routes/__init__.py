"""One APIRouter a file."""

from app.api.routes import (
    console,
    datasets,
    embed,
    health,
    jobs,
    keys,
    peft,
    predict,
    tasks,
    train,
    v2,
    workers,
)

ROUTERS = [
    health.router,
    predict.router,
    embed.router,
    train.router,
    jobs.router,
    workers.router,
    tasks.router,
    peft.router,
    datasets.router,
    keys.router,
    console.router,
    v2.router,
]

__all__ = ["ROUTERS"]
