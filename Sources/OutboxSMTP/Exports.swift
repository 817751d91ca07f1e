@_exported import OutboxSMTPGrammar
