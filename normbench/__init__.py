"""normbench: which normalization layer to use, and why, measured.

    import normbench
    records = normbench.run("configs/groupnorm.yaml", overrides={"train.epochs": 3})
    frame = normbench.load_results("results")          # needs normbench[pandas]

Importing normbench does not import TensorFlow; training does, in the process that trains.
"""

__version__ = "0.1.0"
__all__ = ["run", "load_results", "NormbenchError", "RunRecord", "Spec", "__version__"]

from normbench.errors import NormbenchError  # noqa: E402


def __getattr__(name: str):
    """The API's names, imported on first use (pydantic and the spec schema load then)."""
    if name in ("run", "load_results"):
        from normbench import api

        return getattr(api, name)
    if name == "RunRecord":
        from normbench.store import RunRecord

        return RunRecord
    if name == "Spec":
        from normbench.spec import Spec

        return Spec
    raise AttributeError(f"module 'normbench' has no attribute {name!r}")
