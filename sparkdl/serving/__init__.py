"""Real-time serving of stored models over HTTP (`sparkdl serve`): see `sparkdl.serving.server` (the model, the
batching, reload), `sparkdl.serving.http` (the HTTP layer on uvicorn), `sparkdl.serving.limits` (its limits) and
`sparkdl.serving.workers` for several server processes on one port."""
from sparkdl.serving.http import read_token
from sparkdl.serving.limits import ServingLimits
from sparkdl.serving.server import ModelServer
from sparkdl.serving.workers import ServerPool, WorkerOptions

__all__ = ["ModelServer", "ServerPool", "ServingLimits", "WorkerOptions", "read_token"]
