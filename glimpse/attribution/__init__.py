"""Attribution and pictures of what the model looked at."""
