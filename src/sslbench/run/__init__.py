"""One run: its steps, the model and trainer it builds, its folder and results.json."""
