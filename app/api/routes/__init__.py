"""One APIRouter a file."""

from app.api.routes import console, datasets, health, jobs, keys, predict, tasks, train, workers

ROUTERS = [
    health.router,
    predict.router,
    train.router,
    jobs.router,
    workers.router,
    tasks.router,
    datasets.router,
    keys.router,
    console.router,
]

__all__ = ["ROUTERS"]
