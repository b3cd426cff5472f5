"""Models: their architecture by parts, where configs come from, and exact parameter counts."""
