"""What every configuration model shares: strictness and small field types."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


def compile_patterns(patterns: list[str]) -> re.Pattern[str]:
    """fnmatch patterns (case-sensitive) as one regular expression."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or r"(?!)")


class ConfigModel(BaseModel):
    """Unknown keys are errors (a typo must not pass silently); values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveSeconds = Annotated[float, Field(gt=0)]
