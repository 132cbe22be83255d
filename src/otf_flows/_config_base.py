"""Base class of every configuration model: unknown keys are errors."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A pydantic model that forbids unknown keys and validates defaults."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
