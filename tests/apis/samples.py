"""Usage objects as the real API returns them, shared by the per-API tests."""

CHAT_USAGE = {
    "prompt_tokens": 24,
    "completion_tokens": 70,
    "total_tokens": 94,
    "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 64,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


RESPONSES_USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 3},
    "output_tokens": 70,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 81,
}
