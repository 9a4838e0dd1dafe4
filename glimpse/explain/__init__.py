"""Explanations beyond gradients: a trained Explainer, iGOS++ masks (issue 9)."""
