"""What answers requests: the FastAPI app (one router per resource), the funnel, the user's
state in Redis, the one recommendation answer, profiles and the OpenAPI document."""
