// OutboxSMTP
