"""Not a stage: MLflow models registered before the library moved pickle their pyfunc
classes as `stages.mlflow_models.*`; this re-export keeps them loadable. New code imports
magvit.runtime.mlflow_models."""

from magvit.runtime.mlflow_models import MLMPyfunc, TokenizerPyfunc

__all__ = ["MLMPyfunc", "TokenizerPyfunc"]
