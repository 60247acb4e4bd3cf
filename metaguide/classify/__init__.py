"""Few-shot classification: category prototypes and nearest-prototype scoring."""
