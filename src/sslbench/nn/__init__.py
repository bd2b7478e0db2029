"""The networks' parts: backbones, losses, optimisers and their schedules."""
