"""Real-time serving of stored models over HTTP (`sparkdl serve`): see `sparkdl.serving.server`, and
`sparkdl.serving.workers` for several server processes on one port."""
from sparkdl.serving.server import ModelServer
from sparkdl.serving.workers import ServerPool, WorkerOptions

__all__ = ["ModelServer", "ServerPool", "WorkerOptions"]
