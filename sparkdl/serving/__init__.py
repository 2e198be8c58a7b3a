"""Real-time serving of stored models over HTTP (`sparkdl serve`): see `sparkdl.serving.server`."""
from sparkdl.serving.server import ModelServer

__all__ = ["ModelServer"]
