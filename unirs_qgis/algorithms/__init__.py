"""UniRS Processing algorithms, one per module; `base` holds what they share."""
