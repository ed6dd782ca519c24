"""One APIRouter a file."""

from app.api.routes import console, datasets, health, jobs, keys, predict, tasks, train, v2

ROUTERS = [
    health.router,
    predict.router,
    train.router,
    jobs.router,
    tasks.router,
    datasets.router,
    keys.router,
    console.router,
    v2.router,
]

__all__ = ["ROUTERS"]
