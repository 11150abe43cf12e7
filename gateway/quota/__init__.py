"""Per-team quotas: window maths and request planning (pure), and the service that runs them."""
