// OutboxTransports
