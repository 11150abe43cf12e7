"""OpenAI API gateway for teams."""

__version__ = "0.1.0"
