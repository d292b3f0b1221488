"""Command lines: one module per command that has shared options (sweep, benchmark), and ``common`` (the shared
options and the error wrapper). Ray is imported only once a command really runs."""
