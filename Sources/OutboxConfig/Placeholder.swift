// OutboxConfig
