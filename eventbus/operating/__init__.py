"""Operating: status, replay, maintenance, metrics, logs and database roles."""
