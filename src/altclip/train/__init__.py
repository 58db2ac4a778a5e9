"""Training: teacher learning (distill) and contrastive learning, on a shared loop."""
