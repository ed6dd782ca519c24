"""One APIRouter a file."""

from app.api.routes import datasets, health, jobs, predict, tasks, train

ROUTERS = [health.router, predict.router, train.router, jobs.router, tasks.router, datasets.router]

__all__ = ["ROUTERS"]
