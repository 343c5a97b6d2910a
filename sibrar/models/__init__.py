"""Models: the one Model interface, SiBraR, the multi-branch ablation and the baselines.

Importing this package registers every built-in model (and its config dataclass) in
`sibrar.registry.MODELS`; `import sibrar` does so, so configs resolve `model.name` from anywhere.
"""

from sibrar.models import baselines, multibranch, sibrar  # noqa: F401  (registration by import)
from sibrar.models.base import FULL_VIEW, MODELS, Batch, Model, SideView, View, create_model, register_model

__all__ = ["FULL_VIEW", "MODELS", "Batch", "Model", "SideView", "View", "create_model", "register_model"]
