// OutboxMIME
