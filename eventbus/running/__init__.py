"""Running workers: the supervisor, its workers, and how a batch is claimed and handled."""
